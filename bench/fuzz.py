"""Mutational fuzzing of the .mgz reader, in process.

Containers of every kind are made once — model streams with and without a block record
length and without the adaptive stage, zstd, stored, empty, several blocks, several
frames — and then damaged at random: bit flips, byte sets, truncation, insertion,
deletion, and header fields rewritten with a valid CRC (through the writer's own
`pack_header`, so the forged header passes the CRC check and the reader's other checks
are what stands between it and the decoder). Each damaged file is decompressed with a
time limit. Outcomes:

    ok          decoded to the original (the mutation did not change what it means)
    error       FormatError / ModelMismatch / ModelNotFound: the clean refusal
    traceback   any other exception (a bug)
    hang        over the time limit
    wrong       returned bytes other than the original without raising (a bug)

    python bench/fuzz.py --cases 20000 [--seed 0] [--limit 30] [--model tiny]

The model defaults to a small random model (the "test" preset), so that thousands of
model streams decode in minutes; --model NAME uses a shipped model or checkpoint. The
exit status is 1 if any case was a traceback, a hang or a wrong output.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import random
import re
import signal
import sys
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megazip import adaptive, checkpoint, container  # noqa: E402
from megazip.container import FormatError, ModelMismatch  # noqa: E402

EXPECTED = (FormatError, ModelMismatch, checkpoint.ModelNotFound)
MUTATIONS = ("flip", "set", "truncate", "insert", "delete", "header", "header-bytes")
KIND_NAMES = ("model+record", "model", "model-plain", "zstd", "stored", "empty", "blocks", "frames")


def fuzz_model():
    """A small integer model (the "test" preset) trained for a few seconds on word salad,
    so that it wins text segments even without the adaptive stage."""
    import torch

    from megazip.export import export
    from megazip.model import PRESETS, Megabyte

    torch.manual_seed(0)
    data = torch.tensor(list(words(0, 20000)))
    m = Megabyte(PRESETS["test"])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(100):
        starts = torch.randint(0, len(data) - 64, (8,))
        x = torch.stack([data[s : s + 64] for s in starts])
        _, loss = m(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return export(m, torch.stack([data[s : s + 64] for s in range(0, 64 * 16, 64)]))


def words(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    vocab = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "with",
        "was",
        "on",
        "be",
        "by",
        "this",
        "are",
        "from",
    ]
    out = []
    while sum(map(len, out)) < n:
        out.append(rng.choice(vocab) + rng.choice([" ", " ", ", ", ". "]))
    return "".join(out).encode()[:n]


def records(seed: int, n: int) -> bytes:
    """Fixed-width records (a block record length is signalled for them)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        name = rng.choice([b"alpha", b"beta", b"gamma", b"delta"])
        out += b"%05d,%-8s,%05d\n" % (len(out) // 21, name, rng.randrange(100000))
    return bytes(out[:n])


def noise(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def kinds(model) -> dict[str, tuple[bytes, bytes]]:
    """name -> (original, .mgz) for every kind of container."""
    c = container.compress
    # short lanes, many of them: a decoder's cost is one step per byte of the longest lane
    made = {
        "model+record": records(1, 1024),
        "model": words(2, 512),
        "model-plain": words(3, 512),
        "zstd": noise(10, 64) * 500,  # long exact repeats: zstd beats the stage
        "stored": noise(4, 300),
        "empty": b"",
        "blocks": words(5, 128) + noise(6, 32) + words(7, 96),
        "frames": words(8, 512) + noise(9, 256) + b"z" * 256,
    }
    lanes = dict(segment_size=32, lanes=16)
    options = {
        "model+record": dict(segment_size=128, lanes=8),
        "model": lanes,
        "model-plain": dict(lanes, adaptive=False),
        "blocks": dict(segment_size=32, lanes=3),
        "frames": dict(frame_size=256, segment_size=32, lanes=8),
    }
    out = {}
    assert tuple(made) == KIND_NAMES
    for name, data in made.items():
        blob = c(data, model, **options.get(name, {}))
        assert container.decompress(blob, model) == data
        out[name] = (data, blob)
    kinds = {name: describe(blob) for name, (_, blob) in out.items()}
    from megazip.adaptive import ADAPTIVE_VERSION

    v = f"M stage {ADAPTIVE_VERSION}"
    assert f"{v} r=21" in kinds["model+record"] and f"{v} r=0" in kinds["blocks"]
    assert "M" in kinds["model"] and "stage 0" in kinds["model-plain"] and "M" in kinds["blocks"]
    assert kinds["zstd"] == "[Z stage 0]" and kinds["stored"] == "[S stage 0]"
    assert kinds["frames"].count("[") > 2 and kinds["blocks"].count("M") > 3
    return out


def describe(blob: bytes) -> str:
    """Each frame's segment methods, adaptive stage and first block's record length."""
    parts = []
    for at, fr in header_spans(blob):
        methods = "".join("SZMA"[s.method] for s in fr.segments)
        record = ""
        if fr.blocks and fr.stage:
            body = at + fr.size + sum(s.payload for s in fr.segments)
            record = f" r={adaptive.read_record_head(blob[body : body + fr.blocks[0]])[0]}"
        parts.append(f"[{methods or '-'} stage {fr.stage}{record}]")
    return " ".join(parts)


def header_spans(blob: bytes) -> list[tuple[int, container.Frame]]:
    """(offset, header) of every frame."""
    info, at, out = container.scan(blob), 0, []
    for fr in info.frames:
        out.append((at, fr))
        at += fr.size + fr.body
    return out


def forge_header(blob: bytes, rng: random.Random) -> bytes:
    """A header field rewritten, re-packed with valid CRCs."""
    at, fr = rng.choice(header_spans(blob))
    f = dataclasses.replace(fr, segments=[dataclasses.replace(s) for s in fr.segments])
    f.blocks = list(fr.blocks)
    small = lambda v: max(0, v + rng.choice([-9, -4, -1, 1, 4, 9, 64, 1 << 20]))  # noqa: E731
    field = rng.choice(
        ["index", "length", "segment_size", "lanes", "stage", "flags", "crc", "hash",
         "method", "payload", "block", "block", "name", "drop-segment", "add-segment"]
    )  # fmt: skip
    if field == "index":
        f.index = small(f.index)
    elif field == "length":
        f.length = small(f.length)
    elif field == "segment_size":
        f.segment_size = small(f.segment_size)
    elif field == "lanes":
        f.lanes = small(f.lanes)
    elif field == "stage":
        f.stage = rng.randrange(256)
    elif field == "flags":
        f.flags ^= 1 << rng.randrange(8)
    elif field == "crc":
        f.crc ^= 1 << rng.randrange(32)
    elif field == "hash" and f.model_hash:
        h = bytearray(f.model_hash)
        h[rng.randrange(len(h))] ^= 1 << rng.randrange(8)
        f.model_hash = bytes(h)
    elif field == "name":
        f.model_name = rng.choice(["", "tiny", "x" * 300, "nope"])
    elif field == "method" and f.segments:
        s = rng.choice(f.segments)
        s.method = rng.choice([0, 1, 2, 3])
        s.payload = {0: s.length, 1: max(1, s.length // 2), 2: 0}.get(s.method, 0)
    elif field == "payload" and f.segments:
        s = rng.choice(f.segments)
        s.payload = small(s.payload)
    elif field == "block" and f.blocks:
        i = rng.randrange(len(f.blocks))
        f.blocks[i] = small(f.blocks[i])
    elif field == "drop-segment" and f.segments:
        f.segments.pop(rng.randrange(len(f.segments)))
    elif field == "add-segment":
        f.segments.insert(rng.randrange(len(f.segments) + 1), container.Segment(0, 1, 1))
    return blob[:at] + container.pack_header(f) + blob[at + fr.size :]


def mutate(blob: bytes, rng: random.Random, how: str) -> bytes:
    b = bytearray(blob)
    n = len(b)
    if how == "flip":
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif how == "set":
        for _ in range(rng.choice([1, 1, 2, 4])):
            b[rng.randrange(n)] = rng.choice([0, 255, rng.randrange(256)])
    elif how == "truncate":
        del b[rng.randrange(n) :]
    elif how == "insert":
        i = rng.randrange(n + 1)
        b[i:i] = rng.randbytes(rng.choice([1, 1, 2, 4, 16, 100]))
    elif how == "delete":
        i = rng.randrange(n)
        del b[i : i + rng.choice([1, 1, 2, 4, 16, 100])]
    elif how == "header":
        return forge_header(blob, rng)
    elif how == "header-bytes":  # any header byte changed, the header CRC recomputed
        at, fr = rng.choice(header_spans(blob))
        end = at + fr.size - 4
        b[rng.randrange(at, end)] = rng.randrange(256)
        b[end : end + 4] = zlib.crc32(b[at:end]).to_bytes(4, "little")
    return bytes(b)


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout


def run_case(blob: bytes, original: bytes, model, limit: float) -> tuple[str, str]:
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        out = container.decompress(blob, model)
    except Timeout:
        return "hang", ""
    except EXPECTED as e:
        message = str(e).split("(")[0].strip()
        return "error", re.sub(r"0x[0-9a-f]+|[0-9a-f]{8,}|\d+", "N", message)[:60]
    except Exception as e:  # noqa: BLE001 - the fuzzer's subject
        return "traceback", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return ("ok", "") if out == original else ("wrong", f"{len(out)} bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--model", default=None, help="shipped model or checkpoint (default: random)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model = checkpoint.load_int_model(args.model) if args.model else fuzz_model()
    made = kinds(model)
    for name, (data, blob) in made.items():
        print(f"{name:<13} {len(data):>5} -> {len(blob):>5} bytes  {describe(blob)}")
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    table: dict[tuple[str, str], int] = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    bad: list[str] = []
    slowest = (0.0, "")
    t0 = time.time()
    names = list(made)
    for case in range(args.cases):
        name = names[case % len(names)]
        how = MUTATIONS[(case // len(names)) % len(MUTATIONS)]
        data, blob = made[name]
        damaged = mutate(blob, rng, how) if blob else blob
        t = time.time()
        outcome, detail = run_case(damaged, data, model, args.limit)
        dt = time.time() - t
        if dt > slowest[0]:
            slowest = (dt, f"{name}/{how}")
        table[how, outcome] += 1
        if outcome == "error":
            reasons[detail] += 1
        elif outcome in ("traceback", "hang", "wrong"):
            bad.append(f"case {case} {name}/{how}: {outcome} {detail}")
        if (case + 1) % 1000 == 0:
            print(f"  {case + 1} cases, {time.time() - t0:.0f} s", file=sys.stderr)
    outcomes = ["ok", "error", "traceback", "hang", "wrong"]
    print(f"\n{args.cases} cases in {time.time() - t0:.0f} s (slowest {slowest[0]:.2f} s, "
          f"{slowest[1]}); limit {args.limit:g} s per case")  # fmt: skip
    print(f"| mutation     | {' | '.join(f'{o:>9}' for o in outcomes)} |")
    print(f"|--------------|{'|'.join(['-' * 11] * len(outcomes))}|")
    for how in MUTATIONS + ("total",):
        row = [
            sum(table[h, o] for h in MUTATIONS) if how == "total" else table[how, o]
            for o in outcomes
        ]
        print(f"| {how:<12} | {' | '.join(f'{v:>9,}' for v in row)} |")
    print("\nrefusals by message:")
    for msg, n in reasons.most_common():
        print(f"  {n:>7,}  {msg}")
    for line in bad[:20]:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
