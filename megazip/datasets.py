"""Documents from datasets as people have them: folders of files, JSON Lines, tar archives
and Parquet files.

`iter_documents(paths)` walks the paths (folders recursively, as `list_files` does) and
turns every file into documents by its name:

- `.jsonl` (also `.jsonl.gz`): one document per non-blank line, the UTF-8 bytes of the
  string in `field` (default "text");
- `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz`: one document per regular member;
- `.parquet`: one document per row, the column `field` (string or binary); needs pyarrow
  (`pip install megazip[parquet]`);
- any other file (or any file at all with `raw=True`): one document, its bytes.

A document's *kind* groups totals: the extension of a file or tar member ("(none)" without
one); for records (.jsonl lines, Parquet rows), the value of the `group_by` field when one
is given, else the name of the file they came from. Records are named `data.jsonl:LINE`
(lines from 1) and `data.parquet[ROW]` (rows from 0), tar members `archive.tar:MEMBER`.

Files and members of uncompressed tar archives are read piece by piece (`Document.open`),
so a long one is never held in memory whole; records and members of compressed archives
are small by nature and are read whole. Every error names the file, and for records the
line or row: a bad line raises ValueError("data.jsonl:7: ...").
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .data import list_files

DEFAULT_FIELD = "text"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class Document:
    """One scored unit: a name for reports, a kind for grouped totals, its size in bytes,
    and a way to read its bytes (`open()` gives a binary stream, read piece by piece)."""

    name: str
    kind: str
    size: int
    opener: Callable[[], BinaryIO]

    def open(self) -> BinaryIO:
        return self.opener()

    def read(self) -> bytes:
        with self.open() as f:
            return f.read()

    @classmethod
    def from_bytes(cls, name: str, data: bytes, kind: str | None = None) -> Document:
        return cls(name, kind if kind is not None else extension(name), len(data), _bytes(data))


def _bytes(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def extension(name: str) -> str:
    """The kind of a file by its name: its last suffix, lower case, or "(none)"."""
    return Path(name).suffix.lower() or "(none)"


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def file_document(path: Path) -> Document:
    return Document(str(path), extension(path.name), path.stat().st_size, lambda: open(path, "rb"))


def iter_documents(
    paths,
    field: str = DEFAULT_FIELD,
    group_by: str | None = None,
    raw: bool = False,
) -> Iterator[Document]:
    """Documents of every file under `paths`, in a fixed order (files sorted as
    `list_files` gives them; records and members in their order in the file)."""
    for path in list_files(paths):
        if raw:
            yield file_document(path)
        elif _has_suffix(path, JSONL_SUFFIXES):
            yield from jsonl_documents(path, field, group_by)
        elif _has_suffix(path, TAR_SUFFIXES):
            yield from tar_documents(path)
        elif _has_suffix(path, PARQUET_SUFFIXES):
            yield from parquet_documents(path, field, group_by)
        else:
            yield file_document(path)


def _record_kind(path: Path, where: str, record, group_by: str | None) -> str:
    if group_by is None:
        return path.name
    if group_by not in record:
        raise ValueError(f"{where}: no field {group_by!r} to group by")
    value = record[group_by]
    return value if isinstance(value, str) else json.dumps(value)


def _text_bytes(where: str, field: str, value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    what = "null" if value is None else type(value).__name__
    raise ValueError(f"{where}: field {field!r} is {what}, not a string")


def jsonl_documents(path: Path, field: str = DEFAULT_FIELD, group_by: str | None = None):
    """One document per non-blank line of a JSON Lines file: the string in `field`."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise ValueError(f"{where}: not a JSON line ({msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: not a JSON object")
            if field not in record:
                raise ValueError(f"{where}: no field {field!r} (give --field)")
            data = _text_bytes(where, field, record[field])
            kind = _record_kind(path, where, record, group_by)
            yield Document(where, kind, len(data), _bytes(data))


class _Slice(io.RawIOBase):
    """Bytes [offset, offset + size) of a file, opened on first read."""

    def __init__(self, path: Path, offset: int, size: int):
        self.path, self.offset, self.size, self.pos, self.f = path, offset, size, 0, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = min(max(base + pos, 0), self.size)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        if self.f is None:
            self.f = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        got = self.f.readinto(memoryview(b)[:n])
        self.pos += got
        return got

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        super().close()


def tar_documents(path: Path) -> Iterator[Document]:
    """One document per regular member of a tar archive (compressed or not)."""
    try:
        tar = tarfile.open(path)  # noqa: SIM115 (closed below)
    except tarfile.TarError as e:
        raise ValueError(f"{path}: not a readable tar archive ({e})") from None
    plain = isinstance(tar.fileobj, io.BufferedReader)  # not gzip/bz2/xz: members seekable
    with tar:
        try:
            for m in tar:
                if not m.isfile():
                    continue
                name = f"{path}:{m.name}"
                if plain and not m.issparse():
                    opener = lambda off=m.offset_data, n=m.size: io.BufferedReader(  # noqa: E731
                        _Slice(path, off, n)
                    )
                    yield Document(name, extension(m.name), m.size, opener)
                else:
                    member = tar.extractfile(m)
                    data = member.read() if member is not None else b""
                    yield Document(name, extension(m.name), len(data), _bytes(data))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"{path}: damaged tar archive ({e})") from None


def parquet_documents(path: Path, field: str = DEFAULT_FIELD, group_by: str | None = None):
    """One document per row of a Parquet file: the string or binary column `field`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{path}: reading Parquet needs pyarrow (pip install 'megazip[parquet]')"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a damaged file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    for col in [field] + ([group_by] if group_by else []):
        if col not in names:
            raise ValueError(f"{path}: no column {col!r} (columns: {', '.join(names)})")
    columns = [field] + ([group_by] if group_by and group_by != field else [])
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        values = batch.column(field).to_pylist()
        groups = batch.column(group_by).to_pylist() if group_by else None
        for i, value in enumerate(values):
            where = f"{path}[{row}]"
            data = _text_bytes(where, field, value)
            if groups is None:
                kind = path.name
            else:
                g = groups[i]
                kind = g if isinstance(g, str) else json.dumps(g, default=str)
            yield Document(where, kind, len(data), _bytes(data))
            row += 1
