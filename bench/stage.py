"""Development harness of the adaptive stage: the prior once, the stage many times.

    python bench/stage.py FILE_OR_DIR... [--model tiny] [--prior shipped|flat|none]

For every file it builds the blocks `megazip.compress` builds by default (one frame:
container.default_layout's segments and lanes; a frame that container.incompressible
calls random is not modelled), runs the integer model over each block once and caches
its counts (int32, (lanes, padded length, 256)) under data/prior_cache/, keyed by the
file's sha256, the integer model's content hash and the layout; then replays the
adaptive stage over the cached counts exactly as coder.BlockTables does (the block's
record length from adaptive.choose_record, adaptive.mix_chunk chunk by chunk) and prints
per file: bytes, the stage's ideal bits/byte over all segments, and an estimate of the
file's coded size (every segment at the cheapest of its model cost bits / 8 +
container.STREAM_OVERHEAD, zstd -19 and stored, as container._code_block chooses; no
headers, no re-coding without the segments that lost), plus the stage's CPU time
(process time, after a warm-up that compiles it: steadier than wall time on a busy
machine). With --stage-frames the estimate is also the writer's other choice: the stage
alone on container.stage_pieces (one lane each, flat prior; its ideal length + 5 bytes a
piece), the smaller of the two kept as the writer does (the "alone" column; 0: not
tried).

--prior flat replaces the prior by flat counts (every byte COUNT_TOTAL / 256), --prior
none measures the prior alone (no stage). --json FILE writes the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "prior_cache"


def files_of(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    return out


def layout(data: bytes):
    """(segments of each model block, zstd sizes per segment) as compress builds them;
    ([], []) for a frame the model is not tried on."""
    import zstandard

    from megazip import container

    if not data or container.incompressible(data):
        return [], []
    seg, lanes = container.default_layout(len(data))
    seg = min(seg, len(data))
    pieces = [data[i : i + seg] for i in range(0, len(data), seg)]
    zc = zstandard.ZstdCompressor(level=container.ZSTD_LEVEL)
    zs = [len(zc.compress(p)) for p in pieces]
    blocks = [pieces[b : b + lanes] for b in range(0, len(pieces), lanes)]
    zblocks = [zs[b : b + lanes] for b in range(0, len(pieces), lanes)]
    return blocks, zblocks


class Priors:
    """The integer model's counts of a block, computed once and cached on disk."""

    def __init__(self, model: str):
        self.model_name = model
        self._model = None
        self._hash = None

    @property
    def int_model(self):
        if self._model is None:
            from megazip import checkpoint
            from megazip.npmodel import NpMegabyte

            self._model = NpMegabyte.load(checkpoint.int_model_path(self.model_name))
        return self._model

    def model_hash(self) -> str:
        if self._hash is None:
            meta = CACHE / f"hash-{self.model_name}.txt"
            from megazip import checkpoint

            path = checkpoint.int_model_path(self.model_name)
            key = f"{path}:{path.stat().st_mtime_ns}:{path.stat().st_size}"
            if meta.exists() and meta.read_text().split("\n")[0] == key:
                self._hash = meta.read_text().split("\n")[1]
            else:
                self._hash = self.int_model.content_hash()[:16]
                CACHE.mkdir(parents=True, exist_ok=True)
                meta.write_text(f"{key}\n{self._hash}\n")
        return self._hash

    def counts(self, file_sha: str, index: int, segments: list[bytes]) -> np.ndarray:
        """(B, T, 256) int32 (a read-only memmap) of block `index` of a file."""
        lens = ",".join(str(len(s)) for s in segments)
        lay = hashlib.sha256(lens.encode()).hexdigest()[:8]
        path = CACHE / f"{file_sha[:16]}-{self.model_hash()}-{lay}-{index}.npy"
        if not path.exists():
            from megazip.coder import BlockTables

            P = 8
            T = -(-max(len(s) for s in segments) // P) * P
            CACHE.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            arr = np.lib.format.open_memmap(tmp, "w+", np.int32, (len(segments), T, 256))
            for chunk in BlockTables(self.int_model, segments, adaptive=False):
                C = chunk.prior.shape[1]
                arr[:, chunk.start : chunk.start + C] = np.asarray(chunk.prior)
            arr.flush()
            del arr
            tmp.rename(path)
        return np.load(path, mmap_mode="r")


def lanes_of(segments: list[bytes], T: int):
    sym = np.zeros((len(segments), T), np.int64)
    for i, s in enumerate(segments):
        sym[i, : len(s)] = np.frombuffer(s, np.uint8)
    lengths = np.array([len(s) for s in segments], np.int64)
    return sym, lengths


def replay(segments, prior, mode="shipped", stage=None):
    """(bits per segment, stage seconds): the stage over a block's cached prior."""
    from megazip import adaptive as default_stage
    from megazip.coder import chunk_patches_for
    from megazip.intmodel import COUNT_BITS

    ad = stage or default_stage
    B, T, _ = prior.shape
    sym, lengths = lanes_of(segments, T)
    C = chunk_patches_for(B) * 8
    bits = np.zeros(B, np.float64)
    secs = 0.0
    models = None
    if mode != "none":
        t = time.process_time()
        models = ad.LaneModels(B, T, ad.choose_record(segments))
        secs += time.process_time() - t
    flat = np.full((B, C, 256), (1 << COUNT_BITS) // 256, np.int64)
    for s in range(0, T, C):
        c = min(C, T - s)
        counts = flat[:, :c] if mode == "flat" else np.asarray(prior[:, s : s + c], np.int64)
        ys = sym[:, s : s + c]
        act = lengths[:, None] > np.arange(s, s + c)
        if models is not None:
            t = time.process_time()
            counts = ad.mix_chunk(models, np.ascontiguousarray(counts), ys, act)
            secs += time.process_time() - t
        if counts.shape[-1] == 8:  # version 6 on: the probabilities of the byte's path
            bits += np.where(act, ad.path_bits(counts, ys), 0.0).sum(1)
            continue
        p = np.take_along_axis(counts, ys[..., None], -1)[..., 0]
        bits += np.where(act, COUNT_BITS - np.log2(p), 0.0).sum(1)
    return bits, secs


def stage_alone_bytes(data: bytes, stage=None) -> tuple[float, float]:
    """(bytes, stage seconds) of `data` as the writer's stage segments: the ideal code
    length of each of container.stage_pieces coded alone (one lane, flat prior) plus
    the record length's head and 1 byte a piece."""
    from megazip import adaptive, container

    total = secs = 0.0
    for piece in container.stage_pieces(data):
        shape = np.broadcast_to(np.zeros((1, 1, 256), np.int32), (1, len(piece), 256))
        bits, s = replay([piece], shape, "flat", stage)
        head = adaptive.record_head(adaptive.choose_record([piece]))
        total += bits.sum() / 8 + len(head) + 1
        secs += s
    return total, secs


def measure(path: Path, priors: Priors, mode: str, stage=None, frames=False) -> dict:
    from megazip import container

    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    blocks, zblocks = layout(data)
    ideal = est = 0.0
    modelled = 0
    secs = 0.0
    for k, (segs, zs) in enumerate(zip(blocks, zblocks, strict=True)):
        prior = priors.counts(sha, k, segs)
        bits, s = replay(segs, prior, mode, stage)
        secs += s
        for b, z, seg in zip(bits, zs, segs, strict=True):
            ideal += b / 8
            modelled += len(seg)
            est += min(b / 8 + container.STREAM_OVERHEAD, z, len(seg))
    if not blocks:
        import zstandard

        est = min(len(data), len(zstandard.ZstdCompressor(level=19).compress(data)))
    alone = 0.0
    if frames and blocks:
        alone, s = stage_alone_bytes(data, stage)
        secs += s
        est = min(est, alone)
    return {
        "file": path.name,
        "bytes": len(data),
        "bits_per_byte": 8 * ideal / modelled if modelled else math.nan,
        "ideal_bytes": ideal,
        "est_bytes": est,
        "alone_bytes": alone,
        "stage_s": secs,
    }


def warm_up(stage=None) -> None:
    """Compile the stage (numba) before anything is timed."""
    from megazip import adaptive

    ad = stage or adaptive
    counts = np.ones((1, 64, 256), np.int64) << 16
    ad.mix_chunk(ad.LaneModels(1, 64), counts, np.zeros((1, 64), np.int64), np.ones((1, 64), bool))


def load_stage(path: str):
    """A copy of megazip/adaptive.py at `path`, imported inside the megazip package from a
    private copy of the file (numba caches its kernels beside the file it reads: run on
    the package's own adaptive.py, that cache would name this module and break the real
    one's)."""
    import importlib.util
    import shutil
    import tempfile

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    name = "megazip._stage_" + digest
    private = Path(tempfile.gettempdir()) / "megazip_stage" / f"{name.rsplit('.', 1)[1]}.py"
    private.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, private)
    spec = importlib.util.spec_from_file_location(name, private)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prior", choices=("shipped", "flat", "none"), default="shipped")
    ap.add_argument("--json")
    ap.add_argument("--stage", help="a variant of megazip/adaptive.py to replay instead")
    ap.add_argument(
        "--stage-frames", action="store_true", help="also the stage alone, as the writer tries"
    )
    args = ap.parse_args(argv)
    priors = Priors(args.model)
    stage = load_stage(args.stage) if args.stage else None
    warm_up(stage)
    rows = []
    for f in files_of(args.paths):
        r = measure(f, priors, args.prior, stage, args.stage_frames)
        rows.append(r)
        mbs = r["bytes"] / 1e6 / r["stage_s"] if r["stage_s"] else math.inf
        print(
            f"{r['file']:<34} {r['bytes']:>9,} {r['bits_per_byte']:7.4f} "
            f"{r['ideal_bytes']:>11,.1f} {r['est_bytes']:>11,.1f} {r['alone_bytes']:>11,.1f} "
            f"{r['stage_s']:6.2f}s "
            f"{mbs:6.3f} MB/s",
            flush=True,
        )
    n = sum(r["bytes"] for r in rows)
    s = sum(r["stage_s"] for r in rows)
    print(
        f"{'TOTAL':<34} {n:>9,} {8 * sum(r['ideal_bytes'] for r in rows) / n:7.4f} "
        f"{sum(r['ideal_bytes'] for r in rows):>11,.1f} "
        f"{sum(r['est_bytes'] for r in rows):>11,.1f} "
        f"{sum(r['alone_bytes'] for r in rows):>11,.1f} "
        f"{s:6.2f}s {n / 1e6 / s if s else 0:6.3f} MB/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
