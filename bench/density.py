"""Benchmark of density evaluation (`megazip eval`): speed on many small documents, and
peak memory on long files.

    python bench/density.py [--model tiny] [--docs 1000] [--rss-mib 1,8,64] [--device auto]

1. Speed: a folder of --docs generated text documents of 1-10 KB (seeded, so every run
   scores the same bytes) is scored by the library (`score_documents` over the folder, as
   `megazip eval` does), for each --dtype and the default batch and threads; reported in
   KB/s of wall time (1 KB = 1000 bytes), model loading excluded, and in KB per CPU
   second (all threads of this process), which says more on a shared machine. On CUDA
   (--device auto finds it) the default dtype list is bfloat16 and the batch 256.
2. Memory: `python -m megazip eval FILE --json` in a child process on generated files of
   each --rss-mib size; the child's peak resident set (wait4's ru_maxrss), its wall and
   CPU time (process start, imports and model loading included). A flat peak across sizes
   shows the memory does not grow with the file.

Results go to bench/results/density.{md,json} with the machine described (and its load
average, since these machines are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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
from megazip.evaluate import default_threads, score_documents  # noqa: E402

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


def cpu_seconds(who=resource.RUSAGE_SELF) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def speed(model, folder: Path, device: str, dtype: str, batch: int, threads: int) -> dict:
    docs = list(iter_documents([folder]))
    dt = None if dtype == "float32" else dtype
    cuda = device.startswith("cuda")
    kw = {"device": device, "batch": batch, "dtype": dt, "threads": threads}
    score_documents(enumerate(docs[:2]), model, **kw)  # warm-up
    load = os.getloadavg()[0]
    t, cpu = time.perf_counter(), cpu_seconds()
    results = score_documents(enumerate(docs), model, bucket=16 if cuda else None, **kw)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    n = sum(r.bytes for r in results)
    bits = sum(r.bits["float"] for r in results)
    return {
        "documents": len(results),
        "bytes": n,
        "dtype": dtype,
        "batch": batch,
        "threads": threads,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "kBps": n / seconds / 1e3,
        "kB_per_cpu_second": n / cpu / 1e3,
        "bits_per_byte": bits / n,
        "load_before": load,
    }


# Starts the measured command from a small process. A child's ru_maxrss on Linux includes
# the memory of the process it was forked from, up to its exec (the kernel carries the
# old address space's high-water mark over): spawned from this script, which holds torch
# and a model, every child "peaked" at this script's ~650 MiB, whatever it did itself.
_LAUNCHER = """import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "maxrss_kib": u.ru_maxrss, "cpu": u.ru_utime + u.ru_stime}, f)
"""


def peak_rss(path: Path, model: str, device: str, dtype: str = "float32") -> dict:
    """Peak RSS, wall and CPU time of `python -m megazip eval path --json` in a child
    (started from a small launcher process, see _LAUNCHER)."""
    cmd = [sys.executable, "-m", "megazip", "eval", str(path), "-m", model, "-q", "--json"]
    cmd += ["--device", device, "--dtype", dtype]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        t = time.perf_counter()
        with open(out, "wb") as o, open(err, "wb") as e:
            launcher = [sys.executable, "-c", _LAUNCHER, str(usage_file), *cmd]
            subprocess.run(launcher, stdout=o, stderr=e, check=False)
        seconds = time.perf_counter() - t
        usage = json.loads(usage_file.read_text())
        if usage["rc"]:
            raise SystemExit(f"megazip eval failed: {err.read_bytes().decode()[-500:]}")
        doc = json.loads(out.read_bytes())
    n = doc["total"]["bytes"]
    return {
        "bytes": n,
        "dtype": dtype,
        "peak_rss_bytes": usage["maxrss_kib"] * 1024,  # KiB on Linux
        "seconds": seconds,
        "cpu_seconds": usage["cpu"],
        "kBps": n / seconds / 1e3,
        "bits_per_byte": doc["total"]["float"]["bits_per_byte"],
        "load_before": load,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=checkpoint.DEFAULT_MODEL)
    ap.add_argument("--docs", type=int, default=1000, help="documents in the speed folder")
    ap.add_argument(
        "--rss-mib",
        default="1,8,64",
        help="sizes of the memory files in MiB, each SIZE or SIZE:DTYPE (default --rss-dtype)",
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="comma-separated (default: per device)")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 (CPU), 256 (CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="default: the CPU cores")
    ap.add_argument("--rss-dtype", default="float32", help="--dtype of the memory runs")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--note", default="", help="a paragraph added to the results")
    args = ap.parse_args(argv)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    dtypes = (args.dtype or ("bfloat16" if cuda else "float32,bfloat16")).split(",")
    batch = args.batch or (256 if cuda else 16)
    threads = default_threads(device) if args.threads is None else args.threads
    model = checkpoint.load(args.model, device)[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "device": device,
        "speed": [],
        "memory": [],
        "load_average": {"before": os.getloadavg(), "after": None},
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "note": args.note,
        "machine": describe(device),
    }

    def save():  # after every measurement: a long run cut short keeps what it measured
        result["load_average"]["after"] = os.getloadavg()
        (out / "density.md").write_text(to_markdown(result))
        (out / "density.json").write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        make_documents(folder, args.docs)
        for dt in dtypes:
            result["speed"].append(speed(model, folder, device, dt, batch, threads))
            save()
        for spec in [x for x in args.rss_mib.split(",") if x]:
            size, _, dt = spec.partition(":")
            mib = float(size)
            path = Path(tmp) / f"long_{mib:g}MiB.txt"
            make_file(path, int(mib * MiB))
            rss = peak_rss(path, args.model, device, dt or args.rss_dtype)
            result["memory"].append({"mib": mib, **rss})
            path.unlink()
            save()
    save()
    print(to_markdown(result))
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
        "| documents | bytes | dtype | batch | threads | seconds | KB/s | CPU s | KB/CPU s "
        "| bits/byte | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["speed"]:
        lines.append(
            f"| {s['documents']:,} | {s['bytes']:,} | {s['dtype']} | {s['batch']} | "
            f"{s.get('threads', '-')} | {s['seconds']:.1f} | {s['kBps']:.1f} | "
            f"{s.get('cpu_seconds', float('nan')):.1f} | "
            f"{s.get('kB_per_cpu_second', float('nan')):.1f} | {s['bits_per_byte']:.6f} | "
            f"{s.get('load_before', float('nan')):.1f} |"
        )
    lines += [
        "",
        "## Memory: one long generated text file, `python -m megazip eval FILE` in a child",
        "",
        "| file | bytes | dtype | peak RSS | seconds | KB/s | CPU s | bits/byte | load before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["memory"]:
        rss = m["peak_rss_bytes"]
        lines.append(
            f"| {m['mib']:g} MiB | {m['bytes']:,} | {m.get('dtype', 'float32')} | "
            f"{'-' if rss is None else f'{rss / MiB:,.0f} MiB'} | {m['seconds']:.1f} | "
            f"{m['kBps']:.1f} | {m.get('cpu_seconds', float('nan')):.1f} | "
            f"{m['bits_per_byte']:.4f} | {m.get('load_before', float('nan')):.1f} |"
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
