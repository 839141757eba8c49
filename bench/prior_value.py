"""What the MEGABYTE prior adds inside the adaptive stage, file by file.

    python bench/prior_value.py FILE_OR_DIR... [--model tiny] [--out bench/results]

For every file, coded as `megazip compress` codes it by default (bench/stage.py's blocks:
default layout, one block of lanes per BLOCK_BYTES), the ideal code length in bits per
byte over its model-coded segments of:

- the prior alone (the integer model's counts, no adaptive stage);
- the stage with a flat prior (every byte's count COUNT_TOTAL / 256: what the stage
  learns from the file by itself);
- the stage with the shipped prior (what megazip codes);

and the percentage the prior saves inside the stage (1 - shipped / flat). The prior's
counts are computed once per file and cached (bench/stage.py, data/prior_cache/).
Writes prior_value.md and prior_value.json (with the machine described) to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stage  # noqa: E402  (bench/stage.py, beside this file)

from megazip.benchmark.machine import describe, markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="prior_value", help="results file name (no suffix)")
    args = ap.parse_args(argv)
    from megazip import adaptive

    priors = stage.Priors(args.model)
    stage.warm_up()
    rows = []
    for f in stage.files_of(args.paths):
        r = {"file": f.name}
        for mode, key in (("none", "prior"), ("flat", "flat"), ("shipped", "stage")):
            m = stage.measure(f, priors, mode)
            r["bytes"] = m["bytes"]
            r[key] = m["bits_per_byte"]
            r[key + "_bits"] = 8 * m["ideal_bytes"]
        r["saves_percent"] = 100 * (1 - r["stage"] / r["flat"]) if r["flat"] else 0.0
        rows.append(r)
        print(
            f"{r['file']:<32} {r['bytes']:>10,} prior {r['prior']:.3f} flat {r['flat']:.3f} "
            f"stage {r['stage']:.3f} saves {r['saves_percent']:.1f} %",
            flush=True,
        )
    modelled = [r for r in rows if r["stage"] == r["stage"]]  # NaN: not model-coded
    n = sum(r["bytes"] for r in modelled)
    total = {
        k: sum(r[k + "_bits"] for r in modelled) / n if n else 0.0
        for k in ("prior", "flat", "stage")
    }
    total["saves_percent"] = 100 * (1 - total["stage"] / total["flat"]) if total["flat"] else 0.0
    doc = {
        "model": args.model,
        "model_hash": priors.model_hash(),
        "adaptive_version": adaptive.ADAPTIVE_VERSION,
        "files": rows,
        "total": {"bytes": n, **total},
        "machine": describe("cpu"),
    }
    lines = [
        f"# bench/prior_value.py: what the prior adds (model {args.model}, adaptive stage "
        f"version {adaptive.ADAPTIVE_VERSION})",
        "",
        "Bits per byte (ideal code length over the model-coded segments, default layout).",
        "",
        "| file | bytes | prior alone | stage, flat prior | stage, shipped prior | prior saves |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['bytes']:,} | {r['prior']:.3f} | {r['flat']:.3f} | "
            f"{r['stage']:.3f} | {r['saves_percent']:.1f} % |"
        )
    lines.append(
        f"| **all** | **{n:,}** | {total['prior']:.3f} | {total['flat']:.3f} | "
        f"{total['stage']:.3f} | {total['saves_percent']:.1f} % |"
    )
    lines += ["", f"Machine: {markdown(doc['machine'])}", ""]
    md = "\n".join(lines)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(md)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":
    main()
