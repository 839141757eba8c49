"""Benchmark of the coding path: ideal vs coded size, and compress/decompress speed.

    python bench/coder.py [--model tiny] [--input FILE] [--bytes N] [--repeat 3]

For a fixed input (default: the first 256 KiB of the Canterbury corpus's lcet10.txt, from
../shared/corpora beside the checkout, cut into 4 KiB segments: 64 lanes) it reports the
integer model's ideal code length (sum of -log2 p over the model-coded segments), the
bytes the range coder actually wrote for them (overhead %), and the median compress and
decompress speed in KB/s (1 KB = 1000 bytes) over --repeat runs, each round trip
verified: with the adaptive stage (as megazip codes) and with the prior alone, measured
side by side, so the stage's share of the time is the difference. Results go to
bench/results/coder.{md,json} with the machine described.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import megazip
from megazip import checkpoint, container
from megazip.benchmark import describe, markdown
from megazip.coder import decode_block, encode_block

ROOT = Path(__file__).resolve().parents[1]


DEFAULT_INPUT = ROOT.parent / "shared" / "corpora" / "canterbury" / "lcet10.txt"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=checkpoint.DEFAULT_MODEL)
    ap.add_argument("--input", default=str(DEFAULT_INPUT), help="input file")
    ap.add_argument("--bytes", type=int, default=256 * 1024, help="bytes of the input to use")
    ap.add_argument("--segment-size", type=int, default=4096, help="bytes per lane")
    ap.add_argument("--lanes", type=int, default=container.DEFAULT_LANES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    data = Path(args.input).read_bytes()[: args.bytes]
    name = Path(args.input).name
    int_model = checkpoint.load_int_model(args.model).to(args.device)
    seg = args.segment_size
    segments = [data[i : i + seg] for i in range(0, len(data), seg)]

    # the model path: every segment model-coded, one block; the prior alone and with the
    # adaptive stage, measured side by side in each repeat
    encode_block(int_model, segments[:1])  # warm-up (compiles kernels on first use)
    times: dict[str, list[float]] = {"enc": [], "dec": [], "enc_prior": [], "dec_prior": []}
    for _ in range(args.repeat):
        for adaptive, tag in ((True, ""), (False, "_prior")):
            t = time.perf_counter()
            stream_, bits_ = encode_block(int_model, segments, adaptive=adaptive)
            times["enc" + tag].append(time.perf_counter() - t)
            t = time.perf_counter()
            back = decode_block(int_model, stream_, [len(s) for s in segments], adaptive=adaptive)
            times["dec" + tag].append(time.perf_counter() - t)
            assert back == segments, "round trip failed"
            if adaptive:
                stream, bits = stream_, bits_
            else:
                prior_stream, prior_bits = stream_, bits_
    med = {k: statistics.median(v) for k, v in times.items()}
    ideal = sum(bits) / 8
    # the whole container, as `megazip compress` writes it
    stats: dict = {}
    t = time.perf_counter()
    blob = megazip.compress(
        data, int_model, lanes=args.lanes, segment_size=seg, device=args.device, stats=stats
    )
    full_c = time.perf_counter() - t
    t = time.perf_counter()
    assert megazip.decompress(blob, int_model, device=args.device) == data
    full_d = time.perf_counter() - t

    kb = len(data) / 1e3
    result = {
        "input": name,
        "bytes": len(data),
        "model": args.model,
        "model_hash": int_model.content_hash()[:16],
        "kernels": int_model.kernels.name,
        "lanes": len(segments),
        "segment_size": seg,
        "ideal_bytes": ideal,
        "coded_bytes": len(stream),
        "overhead_percent": 100 * (len(stream) / ideal - 1) if ideal else 0.0,
        "ideal_bits_per_byte": 8 * ideal / len(data),
        "model_compress_kBps": kb / med["enc"],
        "model_decompress_kBps": kb / med["dec"],
        "prior_ideal_bits_per_byte": sum(prior_bits) / len(data),
        "prior_coded_bytes": len(prior_stream),
        "prior_compress_kBps": kb / med["enc_prior"],
        "prior_decompress_kBps": kb / med["dec_prior"],
        # share of the coding time spent in the adaptive stage (with vs without it)
        "adaptive_share_compress": 1 - med["enc_prior"] / med["enc"],
        "adaptive_share_decompress": 1 - med["dec_prior"] / med["dec"],
        "container_bytes": len(blob),
        "container_bits_per_byte": 8 * len(blob) / len(data),
        "container_compress_kBps": kb / full_c,
        "container_decompress_kBps": kb / full_d,
        "repeat": args.repeat,
        "machine": describe(args.device),
    }
    rows = [
        ("input", f"{name}, {len(data):,} bytes, {len(segments)} lanes x {seg:,} bytes"),
        ("model", f"{args.model} ({result['model_hash']}, {result['kernels']} kernels)"),
        (
            "ideal (sum of -log2 p)",
            f"{ideal:,.1f} bytes ({result['ideal_bits_per_byte']:.4f} bits/byte)",
        ),
        (
            "range coder output",
            f"{len(stream):,} bytes (overhead {result['overhead_percent']:+.3f} %)",
        ),
        (
            "prior alone (no adaptive stage)",
            f"{result['prior_ideal_bits_per_byte']:.4f} bits/byte, "
            f"{len(prior_stream):,} bytes coded",
        ),
        (
            "compress, model path",
            f"{result['model_compress_kBps']:.1f} KB/s (prior alone "
            f"{result['prior_compress_kBps']:.1f}; adaptive stage "
            f"{100 * result['adaptive_share_compress']:.0f} % of the time)",
        ),
        (
            "decompress, model path",
            f"{result['model_decompress_kBps']:.1f} KB/s (prior alone "
            f"{result['prior_decompress_kBps']:.1f}; adaptive stage "
            f"{100 * result['adaptive_share_decompress']:.0f} % of the time)",
        ),
        (
            "megazip.compress (container)",
            f"{len(blob):,} bytes, {result['container_compress_kBps']:.1f} KB/s",
        ),
        ("megazip.decompress (container)", f"{result['container_decompress_kBps']:.1f} KB/s"),
    ]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    md = f"# bench/coder.py\n\n{table}\n\nMachine: {markdown(result['machine'])}\n"
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coder.md").write_text(md)
    (out / "coder.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
