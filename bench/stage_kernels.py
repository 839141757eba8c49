"""The adaptive stage's share of a real decode, timed part by part, with one thread.

    python bench/stage_kernels.py FILE.mgz [--against DIR ...] [--repeat 3]

Decodes FILE.mgz (a model-coded .mgz) with container.decompress(threads=1), each run in a
fresh process, with timers around the three calls a decoding step makes into the stage
(adaptive.begin, the decoder's byte decode coder._decode_byte, adaptive.update) and
prints their seconds and the whole decode's, medians of --repeat runs. With --against,
the same runs alternate with other checkouts (DIR: a repository root, imported first),
so two versions of the stage are compared side by side on one machine, whose speed
drifts from hour to hour. A process's first decode pays the page faults of fresh tables
in `update`; the total includes the model and the arithmetic decoder. Writes
bench/results/stage_kernels.{md,json} with the machine described (--out '' for none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("begin", "decode", "update")


def child(path: str, root: str) -> dict:
    """One timed decode of `path` with megazip imported from `root` (seconds per part)."""
    sys.path.insert(0, root)
    from megazip import adaptive, coder, container

    spent = dict.fromkeys(PARTS, 0.0)

    def timed(owner, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t

        setattr(owner, name, wrapper)

    timed(adaptive, "begin", "begin")
    timed(coder, "_decode_byte", "decode")
    timed(adaptive, "update", "update")
    blob = Path(path).read_bytes()
    t = time.perf_counter()
    out = container.decompress(blob, threads=1)
    spent["total"] = time.perf_counter() - t
    spent["bytes"] = len(out)
    return spent


def checkout_name(root: str) -> str:
    """A checkout by its commit (git rev-parse --short HEAD), not by its path."""
    done = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"commit {done.stdout.strip()}" if done.returncode == 0 else Path(root).name


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("path", help="a model-coded .mgz file")
    ap.add_argument("--against", nargs="*", default=[], help="other checkouts' roots")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.path, a.child)))
        return {}
    roots = [str(ROOT), *(str(Path(d).resolve()) for d in a.against)]
    names = {r: checkout_name(r) for r in roots}
    names[str(ROOT)] = "this checkout, " + names[str(ROOT)]
    runs: dict[str, list[dict]] = {r: [] for r in roots}
    for _ in range(a.repeat):
        for r in roots:  # alternating: each version in turn
            cmd = [sys.executable, __file__, a.path, "--child", r]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[r].append(json.loads(done.stdout.strip().splitlines()[-1]))
    sys.path.insert(0, str(ROOT))
    from megazip.benchmark.machine import describe, markdown

    machine = describe("cpu")
    head = "| checkout | begin s | decode s | update s | stage s | whole decode s | runs |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in (*PARTS, "total")}
        stage = statistics.median(sum(x[k] for k in PARTS) for x in rs)
        lines.append(
            f"| {names[r]} | {med['begin']:.2f} | {med['decode']:.2f} | {med['update']:.2f} | "
            f"{stage:.2f} | {med['total']:.2f} | {len(rs)} |"
        )
    table = "\n".join(lines)
    print(table)
    named = {names[r]: rs for r, rs in runs.items()}
    doc = {"machine": machine, "input": Path(a.path).name, "runs": named}
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stage_kernels.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / "stage_kernels.md").write_text(
            "# The stage's share of a decode, one thread\n\n"
            f"`python bench/stage_kernels.py {Path(a.path).name}"
            f"{' --against DIR' * len(a.against)}`: seconds, medians "
            f"of {a.repeat} runs, each in a fresh process, checkouts alternating. Machine: "
            f"{markdown(machine)}.\n\n{table}\n"
        )
    return doc


if __name__ == "__main__":
    main()
