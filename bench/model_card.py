"""Ship a trained checkpoint as a named model and write its model card.

    python bench/model_card.py --checkpoint runs/tiny --name tiny [--corpus data/corpus]

Copies the checkpoint into models/ (NAME.json, NAME.safetensors float weights unless
--int-only, NAME.int_model.safetensors integer coding model), then measures and writes
models/NAME.md:
validation bits/byte of the float and the integer model on the corpus validation split,
bits/byte on every Canterbury file (float, integer, and the real megazip container,
round-trip verified) next to zstd -19, xz -9e and bzip2 -9, and coding speed from
bench/coder.py. The figures also go into NAME.json, which `megazip models` reads.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import lzma
import shutil
import sys
import time
from pathlib import Path

import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coder as coder_bench  # noqa: E402
from machine import describe, markdown  # noqa: E402

import megazip  # noqa: E402
from megazip import checkpoint  # noqa: E402
from megazip.adaptive import ADAPTIVE_VERSION  # noqa: E402
from megazip.coder import code_bits  # noqa: E402
from megazip.data import ByteWindows, list_files, read_bytes  # noqa: E402
from megazip.evaluate import float_bits, int_code_lengths  # noqa: E402
from megazip.export import load_int_model  # noqa: E402
from megazip.train import LN2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("float", "int", "adaptive", "megazip", "zstd -19", "xz -9e", "bzip2 -9")
CANTERBURY = ROOT.parent / "shared" / "corpora" / "canterbury"


@torch.no_grad()
def validation(model, int_model, corpus: Path, windows: int = 128) -> tuple[float, float]:
    """(float, integer) bits/byte on `windows` fixed 1 KiB windows of the validation split."""
    data = read_bytes(list_files([corpus / "valid"]))
    w = ByteWindows(data, model.config.patch_size * 128).fixed(windows, seed=99)
    f = (
        sum(
            model(w[i : i + 16], w[i : i + 16])[1].item() * len(w[i : i + 16])
            for i in range(0, len(w), 16)
        )
        / len(w)
        / LN2
    )
    bits = 0.0
    for start, counts in int_model.count_tables(w, chunk_patches=128):
        bits += code_bits(counts.cpu(), w[:, start : start + counts.shape[1]]).sum().item()
    return f, bits / w.numel()


def classical(data: bytes) -> dict[str, int]:
    return {
        "zstd -19": len(zstandard.ZstdCompressor(level=19).compress(data)),
        "xz -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "bzip2 -9": len(bz2.compress(data, 9)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--command", default="", help="the training command, for the card")
    ap.add_argument("--hardware", default="", help="where it trained, for the card")
    ap.add_argument(
        "--int-only",
        action="store_true",
        help="ship only the integer coding model (float figures come from the checkpoint)",
    )
    ap.add_argument(
        "--skip-container",
        action="store_true",
        help="no real .mgz round trips of the Canterbury files (slow for large models on CPU)",
    )
    ap.add_argument("--speed-bytes", type=int, default=256 * 1024, help="bench/coder.py input")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    models = checkpoint.shipped_models_dir()
    src = Path(args.checkpoint)
    meta = json.loads((src / checkpoint.CONFIG_FILE).read_text())
    weights = models / f"{args.name}.safetensors"
    if args.int_only:
        weights.unlink(missing_ok=True)
    else:
        shutil.copyfile(src / checkpoint.WEIGHTS_FILE, weights)
    shutil.copyfile(src / checkpoint.INT_MODEL_FILE, models / f"{args.name}.int_model.safetensors")
    meta_path = models / f"{args.name}.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    model, _ = checkpoint.load(src)
    int_model = load_int_model(models / f"{args.name}.int_model.safetensors")
    v_float, v_int = validation(model, int_model, Path(args.corpus))
    print(f"validation: float {v_float:.4f}, int {v_int:.4f} bits/byte", flush=True)

    rows = []
    for f in sorted(CANTERBURY.iterdir()):
        data = f.read_bytes()
        blob, t_c, t_d = None, None, None
        if not args.skip_container:
            t = time.perf_counter()
            blob = megazip.compress(data, args.name)
            t_c = time.perf_counter() - t
            t = time.perf_counter()
            assert megazip.decompress(blob) == data, f"round trip failed on {f.name}"
            t_d = time.perf_counter() - t
        prior_bits, adaptive_bits = int_code_lengths(int_model, data)
        row = {
            "file": f.name,
            "bytes": len(data),
            "float": float_bits(model, data) / len(data),
            "int": prior_bits / len(data),
            "adaptive": adaptive_bits / len(data),
            "megazip": 8 * len(blob) / len(data) if blob is not None else None,
            "megazip_bytes": len(blob) if blob is not None else None,
            "compress_s": t_c,
            "decompress_s": t_d,
            **{k: 8 * v / len(data) for k, v in classical(data).items()},
        }
        rows.append(row)
        print(
            f"{f.name}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)),
            flush=True,
        )

    speed = coder_bench.main(
        ["--model", args.name, "--repeat", "3", "--bytes", str(args.speed_bytes)]
    )
    total = sum(r["bytes"] for r in rows)

    def avg(k):
        if any(r[k] is None for r in rows):
            return None
        return sum(r[k] * r["bytes"] for r in rows) / total

    def cell(x):
        return "—" if x is None else f"{x:.3f}"

    manifest = ROOT / "bench" / "corpus_manifest.tsv"
    meta.update(
        name=args.name,
        description=f"MEGABYTE {meta['config']['global_dim']}x{meta['config']['global_layers']}"
        f" global / {meta['config']['local_dim']}x{meta['config']['local_layers']} local",
        int_model_hash=int_model.content_hash(),
        valid_bpb_float=v_float,
        valid_bpb_int=v_int,
        canterbury_bpb={k: avg(k) for k in ("float", "int", "adaptive", "megazip")},
        compress_kBps=speed["model_compress_kBps"],
        decompress_kBps=speed["model_decompress_kBps"],
        corpus_manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest(),
        canterbury_files=rows,
    )
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    c = meta["config"]
    lines = [
        f"# Model `{args.name}`",
        "",
        f"A MEGABYTE byte model for megazip. Integer coding model (the canonical artifact, "
        f"named in every .mgz made with it): `{args.name}.int_model.safetensors`, "
        f"content hash `{int_model.content_hash()}`.",
        "",
        "## Architecture",
        "",
        f"- {meta['params']:,} parameters; patch size P = {c['patch_size']}",
        f"- global model: width {c['global_dim']}, {c['global_layers']} layers, "
        f"{c['global_heads']} heads, window {c['window']} patches "
        f"({c['window'] * c['patch_size']} bytes), ALiBi positions",
        f"- local model: width {c['local_dim']}, {c['local_layers']} layers, "
        f"{c['local_heads']} heads; MLP ratio {c['mlp_ratio']}, RMSNorm, GELU",
        "- integer coding model: int8 weights (per output channel), int8 activations "
        "(static scales from export-time calibration), exact integer softmax/norm/GELU",
        "",
        "## Training",
        "",
        f"- data: the corpus of `bench/corpus.py` (manifest `bench/corpus_manifest.tsv`, "
        f"sha256 `{meta['corpus_manifest_sha256'][:16]}...`)",
        f"- command: `{args.command}`" if args.command else "- command: see config",
        f"- steps: {meta['step']}, batch {meta['train']['batch_size']} x "
        f"{meta['train']['seq_len']} bytes, AdamW lr {meta['train']['lr']} cosine to "
        f"{meta['train']['min_lr']}, warm-up {meta['train']['warmup']}",
        f"- hardware: {args.hardware or meta.get('device', '?')}; wall time "
        f"{meta.get('wall_s', 0) / 60:.1f} min",
        *([f"- note: {meta['weights_note']}"] if meta.get("weights_note") else []),
        "- shipped: the integer coding model only (the float weights stay with the "
        "checkpoint, to keep the model under 40 MB)"
        if args.int_only
        else "- shipped: float weights and the integer coding model",
        "",
        "## Density",
        "",
        "Validation split (128 fixed 1 KiB windows): "
        f"float {v_float:.3f} bits/byte, integer {v_int:.3f} bits/byte "
        f"({100 * (v_int / v_float - 1):+.2f} %).",
        "",
        "Canterbury corpus, each file alone. *float*/*int*: the model's ideal code length "
        "(`megazip eval --int`, one lane); *adaptive*: the same with the adaptive stage "
        f"(version {ADAPTIVE_VERSION}) after the integer model, exactly the encoder's code "
        "length for the file coded as one segment (its record length chosen as the "
        "encoder does); *megazip*: the real `.mgz` "
        "size (default settings: segments coded as parallel lanes, adaptive stage on; "
        "header included, round trip verified"
        + ("; not measured for this model: `--skip-container`" if args.skip_container else "")
        + "). Bits per byte:",
        "",
        "| file | bytes | float | int | adaptive | megazip | zstd -19 | xz -9e | bzip2 -9 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows + [
        {
            "file": "**all (bytes-weighted)**",
            "bytes": total,
            **{k: avg(k) for k in COLUMNS},
        }
    ]:
        lines.append(
            f"| {r['file']} | {r['bytes']:,} | {r['float']:.3f} | {r['int']:.3f} | "
            f"{r['adaptive']:.3f} | {cell(r['megazip'])} | {r['zstd -19']:.3f} | "
            f"{r['xz -9e']:.3f} | {r['bzip2 -9']:.3f} |"
        )
    lines += [
        "",
        "## Speed",
        "",
        f"`python bench/coder.py --model {args.name} --bytes {args.speed_bytes}` "
        f"(model path, {speed['lanes']} lanes, "
        f"median of 3): compress {speed['model_compress_kBps']:.1f} KB/s, decompress "
        f"{speed['model_decompress_kBps']:.1f} KB/s with the adaptive stage (prior alone: "
        f"{speed['prior_compress_kBps']:.1f} / {speed['prior_decompress_kBps']:.1f} KB/s); "
        "range coder overhead "
        f"{speed['overhead_percent']:+.3f} % over the ideal code length.",
        "",
        f"Measured on: {markdown(describe('cpu'))}.",
        "",
        "Reproduce: `make corpus`, then "
        f"`{args.command or 'megazip train --recipe ' + args.name}`, then "
        f"`python bench/model_card.py --checkpoint {args.checkpoint} --name {args.name}"
        f"{' --int-only' if args.int_only else ''}`.",
        "",
    ]
    (models / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
