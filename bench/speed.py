"""End-to-end speed of the `megazip` command, file to file, next to zpaq -m5 and xz -9e.

    python bench/speed.py            # generated inputs and ../shared/corpora (<= ~15 min)
    python bench/speed.py --quick    # generated inputs up to 64 KiB only, for iterating

Every figure is the wall time of one command line as a user types it (`megazip compress
FILE -o X`, `megazip decompress X -o Y`), interpreter start, imports and model loading
included; the median of up to --repeat runs (a run longer than --long-s is not repeated).
Every round trip is verified. Inputs: generated text (a prefix of the Canterbury text
files when the corpora are at hand, else seeded word salad) and random bytes of 1 KiB,
16 KiB, 64 KiB and 1 MiB, then every file under the corpora folder. Writes
bench/results/speed.md and speed.json (with the machine described), unless --out ''.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SIZES = {"1K": 1 << 10, "16K": 1 << 14, "64K": 1 << 16, "1M": 1 << 20}
TEXT_FILES = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")


def word_salad(n: int, seed: int = 1) -> bytes:
    """Seeded pseudo-English: Zipf-distributed words from a fixed syllable alphabet."""
    rng = random.Random(seed)
    syll = ["th", "e", "an", "in", "er", "on", "at", "re", "st", "ou", "ing", "ed", "is"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choices(words, weights, k=rng.randint(6, 14))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]


def text_source(corpora: Path) -> tuple[bytes, str]:
    cant = corpora / "canterbury"
    if all((cant / f).is_file() for f in TEXT_FILES):
        return b"".join((cant / f).read_bytes() for f in TEXT_FILES), "Canterbury text files"
    return word_salad(max(SIZES.values())), "seeded word salad"


def inputs(
    corpora: Path, quick: bool, folder: Path, generated_only: bool = False
) -> tuple[list[tuple[str, Path]], str]:
    text, source = text_source(corpora)
    rng = random.Random(0)
    made = []
    for label, n in SIZES.items():
        if quick and n > 1 << 16:
            continue
        for kind, data in (("text", text[:n]), ("random", rng.randbytes(n))):
            p = folder / f"{kind}_{label}"
            p.write_bytes(data)
            made.append((f"{kind} {label}", p))
    if not (quick or generated_only) and corpora.is_dir():
        for sub in sorted(p for p in corpora.iterdir() if p.is_dir()):
            for f in sorted(sub.rglob("*")):
                if f.is_file():
                    made.append((f"{sub.name}/{f.relative_to(sub)}", f))
    return made, source


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=env)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu


def codecs(megazip: list[str], extra: list[str]) -> dict:
    """name -> (compress argv, decompress argv) as functions of (input, packed, output)."""
    out = {
        "megazip": (
            lambda i, p: [*megazip, "compress", "-q", "-f", *extra, str(i), "-o", str(p)],
            lambda p, o: [*megazip, "decompress", "-q", "-f", str(p), "-o", str(o)],
        )
    }
    if shutil.which("zpaq"):  # zpaq wants archive names ending in .zpaq
        out["zpaq -m5"] = (
            lambda i, p: [
                "sh",
                "-c",
                f"rm -f '{p}.zpaq' && zpaq a '{p}.zpaq' '{i}' -m5 >/dev/null 2>&1 "
                f"&& mv '{p}.zpaq' '{p}'",
            ],
            lambda p, o: [
                "sh",
                "-c",
                f"rm -rf '{o}.d' && ln -sf '{p}' '{p}.zpaq' && zpaq x '{p}.zpaq' -to '{o}.d' "
                f">/dev/null 2>&1 && mv \"$(find '{o}.d' -type f)\" '{o}'",
            ],
        )
    if shutil.which("xz"):
        out["xz -9e"] = (
            lambda i, p: ["sh", "-c", f"xz -9e -T1 -c '{i}' > '{p}'"],
            lambda p, o: ["sh", "-c", f"xz -d -c '{p}' > '{o}'"],
        )
    return out


def measure(name, fns, src: Path, work: Path, repeat: int, long_s: float, env) -> dict:
    enc, dec = fns
    packed, back = work / "packed", work / "back"
    ct, dt, ccpu, dcpu = [], [], [], []
    for _ in range(repeat):
        wall, cpu = timed(enc(src, packed), env)
        ct.append(wall)
        ccpu.append(cpu)
        size = packed.stat().st_size
        wall, cpu = timed(dec(packed, back), env)
        dt.append(wall)
        dcpu.append(cpu)
        if back.read_bytes() != src.read_bytes():
            raise RuntimeError(f"{name}: round trip of {src} differs")
        if ct[-1] + dt[-1] > long_s:
            break
    return {
        "bytes": size,
        "compress_s": statistics.median(ct),
        "decompress_s": statistics.median(dt),
        "compress_cpu_s": statistics.median(ccpu),
        "decompress_cpu_s": statistics.median(dcpu),
        "runs": len(ct),
    }


def speed(n: int, s: float) -> str:
    return f"{n / s / 1000:,.1f}" if s > 0 else "-"


def to_markdown(doc: dict) -> str:
    names = doc["codecs"]
    lines = [
        "# megazip speed, end to end (file to file through the command line)",
        "",
        f"Machine: {doc['machine_line']}. Command: `{doc['command']}`. Text inputs: "
        f"{doc['text_source']}. Times are wall seconds, the median of up to {doc['repeat']} "
        "runs (runs: how many), interpreter start, imports and model loading included; "
        "KB/s = 1000 bytes per second of input (wall). cpu: user + system seconds of the "
        "command and its children, all cores together (less sensitive to a busy machine "
        "than wall time). Every round trip verified.",
        "",
    ]
    head = "| input | bytes |"
    rule = "|---|---:|"
    for n in names:
        head += (
            f" {n} size | {n} comp s | {n} decomp s | {n} comp KB/s | {n} decomp KB/s |"
            f" {n} comp cpu s | {n} decomp cpu s |"
        )
        rule += "---:|---:|---:|---:|---:|---:|---:|"
    lines += [head + " runs |", rule + "---:|"]
    for row in doc["rows"]:
        cells = f"| {row['input']} | {row['bytes']:,} |"
        for n in names:
            r = row.get(n)
            if r is None:
                cells += " - | - | - | - | - | - | - |"
                continue
            cells += (
                f" {r['bytes']:,} | {r['compress_s']:.2f} | {r['decompress_s']:.2f} |"
                f" {speed(row['bytes'], r['compress_s'])} |"
                f" {speed(row['bytes'], r['decompress_s'])} |"
                f" {r['compress_cpu_s']:.2f} | {r['decompress_cpu_s']:.2f} |"
            )
        lines.append(cells + f" {max(row[n]['runs'] for n in names if n in row)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="generated inputs up to 64 KiB only")
    ap.add_argument("--corpora", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument(
        "--generated-only", action="store_true", help="generated inputs (up to 1 MiB) only"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per input (median)")
    ap.add_argument("--long-s", type=float, default=20.0, help="a slower round trip runs once")
    ap.add_argument("--only", default="", help="only inputs whose label contains this")
    ap.add_argument("--codecs", default="", help="comma-separated subset, e.g. megazip")
    ap.add_argument(
        "--megazip",
        default="",
        help="the megazip command to time (default: the one next to this Python)",
    )
    ap.add_argument("--args", default="", help="extra arguments for megazip compress")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for speed.md/.json")
    ap.add_argument(
        "--no-warmup", action="store_true", help="skip `python -m megazip.warmup` before timing"
    )
    ap.add_argument("--name", default="speed", help="file name stem of the results")
    a = ap.parse_args(argv)

    exe = Path(sys.executable).with_name("megazip")
    megazip = a.megazip.split() if a.megazip else [str(exe) if exe.exists() else "megazip"]
    env = dict(os.environ)
    table = codecs(megazip, a.args.split())
    if a.codecs:
        keep = {c.strip() for c in a.codecs.split(",")}
        table = {k: v for k, v in table.items() if k in keep or k.split()[0] in keep}
    from megazip.benchmark.machine import describe, markdown

    machine = describe("cpu")
    doc = {
        "machine": machine,
        "machine_line": markdown(machine),
        "command": " ".join(
            ["python bench/speed.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "repeat": a.repeat,
        "codecs": list(table),
        "rows": [],
    }
    if not (a.no_warmup or a.megazip) and "megazip" in table:  # numba compiles once
        subprocess.run([sys.executable, "-m", "megazip.warmup"], env=env, check=False)
    with tempfile.TemporaryDirectory(prefix="megazip-speed-") as tmp:
        tmp = Path(tmp)
        files, doc["text_source"] = inputs(Path(a.corpora), a.quick, tmp, a.generated_only)
        for label, path in files:
            if a.only and a.only not in label:
                continue
            row = {"input": label, "bytes": path.stat().st_size}
            for name, fns in table.items():
                work = tmp / "work"
                work.mkdir(exist_ok=True)
                row[name] = measure(name, fns, path, work, a.repeat, a.long_s, env)
                shutil.rmtree(work)
            doc["rows"].append(row)
            print(
                f"{label:<36} {row['bytes']:>9,}  "
                + "  ".join(
                    f"{n}: {row[n]['compress_s']:.2f}/{row[n]['decompress_s']:.2f} s" for n in table
                ),
                flush=True,
            )
    md = to_markdown(doc)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{a.name}.md").write_text(md)
        (out / f"{a.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
