"""Benchmark of density evaluation (`megazip eval`): speed on many small documents, and
peak memory on long files.

    python bench/density.py [--model tiny] [--docs 1000] [--rss-mib 1,4] [--device auto]

1. Speed: a folder of --docs generated text documents of 1-10 KB (seeded, so every run
   scores the same bytes) is scored by the library (`score_documents` over the folder, as
   `megazip eval` does), for each --dtype and the default batch; reported in KB/s
   (1 KB = 1000 bytes), model loading excluded. On CUDA (--device auto finds it) the
   default dtype list is bfloat16 and the batch 256.
2. Memory: `python -m megazip eval FILE --json` in a child process on generated files of
   each --rss-mib size; the child's peak resident set (wait4's ru_maxrss) and its wall
   time. A flat peak across sizes shows the memory does not grow with the file.

Results go to bench/results/density.{md,json} with the machine described (and its load
average, since these machines are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown  # noqa: E402

from megazip import checkpoint  # noqa: E402
from megazip.datasets import iter_documents  # noqa: E402
from megazip.evaluate import score_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def generated_text(rng: random.Random, n: int, vocabulary: list[str]) -> bytes:
    """n bytes of text-like data: words from a seeded vocabulary, punctuation, lines."""
    out, size = [], 0
    while size < n:
        w = rng.choice(vocabulary)
        w = w.capitalize() if rng.random() < 0.1 else w
        w += rng.choice([" ", " ", " ", " ", ", ", ". ", "\n"])
        out.append(w)
        size += len(w)
    return "".join(out).encode()[:n]


def vocabulary(rng: random.Random, size: int = 2000) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [26 - i for i in range(26)]
    return ["".join(rng.choices(letters, weights, k=rng.randint(1, 9))) for _ in range(size)]


def make_documents(folder: Path, count: int, seed: int = 0) -> int:
    """`count` documents of 1,000-10,000 bytes in `folder`; returns their total size."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    total = 0
    for i in range(count):
        data = generated_text(rng, rng.randint(1000, 10000), vocab)
        (folder / f"doc{i:05d}.txt").write_bytes(data)
        total += len(data)
    return total


def make_file(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    with open(path, "wb") as f:
        for _ in range(n // MiB):
            f.write(generated_text(rng, MiB, vocab))
        f.write(generated_text(rng, n % MiB, vocab))


def speed(model, folder: Path, device: str, dtype: str, batch: int) -> dict:
    docs = list(iter_documents([folder]))
    score_documents(enumerate(docs[:2]), model, device=device, batch=batch)  # warm-up
    t = time.perf_counter()
    results = score_documents(
        enumerate(docs),
        model,
        device=device,
        batch=batch,
        dtype=None if dtype == "float32" else dtype,
        bucket=16 if device.startswith("cuda") else 1,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    n = sum(r.bytes for r in results)
    bits = sum(r.bits["float"] for r in results)
    return {
        "documents": len(results),
        "bytes": n,
        "dtype": dtype,
        "batch": batch,
        "seconds": seconds,
        "kBps": n / seconds / 1e3,
        "bits_per_byte": bits / n,
    }


def peak_rss(path: Path, model: str, device: str) -> dict:
    """Peak RSS and wall time of `python -m megazip eval path --json` in a child."""
    cmd = [sys.executable, "-m", "megazip", "eval", str(path), "-m", model, "-q", "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        child = subprocess.Popen([*cmd, "--device", device], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - t
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if child.returncode:
            raise SystemExit(f"megazip eval failed: {err.read().decode()[-500:]}")
        doc = json.loads(out.read())
    n = doc["total"]["bytes"]
    return {
        "bytes": n,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
        "seconds": seconds,
        "kBps": n / seconds / 1e3,
        "bits_per_byte": doc["total"]["float"]["bits_per_byte"],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=checkpoint.DEFAULT_MODEL)
    ap.add_argument("--docs", type=int, default=1000, help="documents in the speed folder")
    ap.add_argument("--rss-mib", default="1,4", help="sizes of the memory files, in MiB")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="comma-separated (default: per device)")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 (CPU), 256 (CUDA)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--note", default="", help="a paragraph added to the results")
    args = ap.parse_args(argv)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    dtypes = (args.dtype or ("bfloat16" if cuda else "float32,bfloat16")).split(",")
    batch = args.batch or (256 if cuda else 16)
    model = checkpoint.load(args.model, device)[0]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        make_documents(folder, args.docs)
        rows = [speed(model, folder, device, dt, batch) for dt in dtypes]
        memory = []
        for mib in [float(x) for x in args.rss_mib.split(",") if x]:
            path = Path(tmp) / f"long_{mib:g}MiB.txt"
            make_file(path, int(mib * MiB))
            memory.append({"mib": mib, **peak_rss(path, args.model, device)})
            path.unlink()
    result = {
        "model": args.model,
        "device": device,
        "speed": rows,
        "memory": memory,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "note": args.note,
        "machine": describe(device),
    }
    md = to_markdown(result)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "density.md").write_text(md)
    (out / "density.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def to_markdown(r: dict) -> str:
    lines = [
        "# bench/density.py",
        "",
        f"Model {r['model']} on {r['device']}; `megazip eval` scoring (float model, "
        "teacher-forced, each document one stream).",
        "",
        "## Speed: a folder of generated documents of 1-10 KB",
        "",
        "| documents | bytes | dtype | batch | seconds | KB/s | bits/byte |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["speed"]:
        lines.append(
            f"| {s['documents']:,} | {s['bytes']:,} | {s['dtype']} | {s['batch']} | "
            f"{s['seconds']:.1f} | {s['kBps']:.1f} | {s['bits_per_byte']:.4f} |"
        )
    lines += [
        "",
        "## Memory: one long generated text file, `python -m megazip eval FILE` in a child",
        "",
        "| file | bytes | peak RSS | seconds | KB/s | bits/byte |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["memory"]:
        rss = m["peak_rss_bytes"]
        lines.append(
            f"| {m['mib']:g} MiB | {m['bytes']:,} | "
            f"{'-' if rss is None else f'{rss / MiB:,.0f} MiB'} | {m['seconds']:.1f} | "
            f"{m['kBps']:.1f} | {m['bits_per_byte']:.4f} |"
        )
    la = r["load_average"]
    lines += [
        "",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in la['before'])}; "
        f"after: {', '.join(f'{x:.1f}' for x in la['after'])}.",
        "",
        f"GPU: {r['gpu']}."
        if r["gpu"]
        else "GPU: none available to this run, so no CUDA figure was measured.",
        "",
        *([r["note"], ""] if r.get("note") else []),
        f"Machine: {markdown(r['machine'])}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
