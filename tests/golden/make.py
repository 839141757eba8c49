"""The golden .mgz files: small files of every kind, made with the shipped `tiny` model
from inputs generated here (deterministically, with no library's random generator), and
MANIFEST.json with each one's options and the SHA-256 of its original and of itself.

Every build must decode them byte for byte and, from the same inputs and options, write
the same bytes (tests/test_golden.py). A change that breaks that changes the format: bump
the format version (or the adaptive stage's), then regenerate them in one command:

    python tests/golden/make.py          # rewrite the files and MANIFEST.json
    python tests/golden/make.py --check  # what the test checks, without pytest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "tiny"
WORDS = b"the of and to in is that for it as with was on be by this are from at or".split()


def stream(seed: int):
    """64-bit values from a counter hashed with SHA-256: the same on every machine."""
    i = 0
    while True:
        block = hashlib.sha256(b"megazip golden %d %d" % (seed, i)).digest()
        for k in range(0, 32, 8):
            yield int.from_bytes(block[k : k + 8], "little")
        i += 1


def noise(seed: int, n: int) -> bytes:
    out = bytearray()
    for v in stream(seed):
        if len(out) >= n:
            return bytes(out[:n])
        out += v.to_bytes(8, "little")


def text(seed: int, n: int) -> bytes:
    out = bytearray()
    for v in stream(seed):
        if len(out) >= n:
            return bytes(out[:n])
        out += WORDS[v % len(WORDS)] + (b", ", b". ", b" ", b" ")[(v >> 32) % 4]


PROSE = (
    b"The model reads a file one byte at a time and, before each byte, guesses how likely "
    b"every value is. A good guess costs few bits and a bad one costs many, so a model "
    b"that knows the language of the file writes it in far fewer bytes than it had. "
    b"Nothing here repeats a phrase that a dictionary coder could point back to, which "
    b"is why the model alone, without learning from the file as it goes, still beats "
    b"zstd on it: the knowledge was trained in beforehand. Short files, logs, messages "
    b"and source code are where this matters, since a dictionary coder has nothing to "
    b"refer to yet when a file is only a few hundred bytes long. Every frame names the "
    b"model that coded it, by its content hash, so a decoder never guesses wrong.\n"
)


def records(seed: int, n: int) -> bytes:
    out = bytearray()
    names = [b"alpha", b"beta", b"gamma", b"delta"]
    for i, v in enumerate(stream(seed)):
        if len(out) >= n:
            return bytes(out[:n])
        out += b"%05d,%-8s,%05d\n" % (i, names[v % 4], (v >> 8) % 100000)


def table(seed: int, n: int) -> bytes:
    """Binary records of 12 bytes: a counter, a small field, a slowly changing value."""
    out = bytearray()
    for i, v in enumerate(stream(seed)):
        if len(out) >= n:
            return bytes(out[:n])
        out += i.to_bytes(4, "little") + bytes([v % 3, 0]) + (1000 + i // 7).to_bytes(6, "little")


# name -> (input, compress options): every kind of container
KINDS = {
    "empty": (lambda: b"", {}),
    "stored": (lambda: noise(1, 3000), {}),
    "zstd": (lambda: noise(2, 64) * 500, {}),  # long exact repeats: zstd beats the stage
    "model-text": (lambda: text(3, 1024), {"segment_size": 256, "lanes": 4}),
    "model-record": (lambda: records(4, 1024), {"segment_size": 256, "lanes": 4}),
    "model-plain": (lambda: PROSE, {"segment_size": 256, "lanes": 4, "adaptive": False}),
    "blocks": (
        lambda: text(6, 512) + noise(7, 256) + text(8, 512),
        {"segment_size": 256, "lanes": 2},
    ),
    "stage": (lambda: table(11, 6000), {}),
    "frames": (
        lambda: text(9, 1536) + noise(10, 512) + bytes(512),
        {"frame_size": 1024, "segment_size": 256, "lanes": 4},
    ),
}


def make(name: str) -> tuple[bytes, bytes]:
    """(original, .mgz) of one kind, compressed now."""
    sys.path.insert(0, str(HERE.parents[1]))
    from megazip import container

    build, options = KINDS[name]
    data = build()
    return data, container.compress(data, MODEL, **options)


def offsets(info) -> list[int]:
    out, at = [], 0
    for f in info.frames:
        out.append(at)
        at += f.size + f.body
    return out


def records_of(blob: bytes, at: int, f) -> list[int]:
    """The record length each block's stream signals (its head, a varint)."""
    from megazip.adaptive import read_record_head

    pos = at + f.size + sum(s.payload for s in f.segments)
    out = []
    for size in f.blocks:
        out.append(read_record_head(blob[pos : pos + size])[0] if f.stage else 0)
        pos += size
    return out


def manifest() -> dict:
    return json.loads((HERE / "MANIFEST.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Make (or --check) the golden .mgz files.")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    from megazip import container

    if args.check:
        bad = 0
        for name, entry in manifest().items():
            blob = (HERE / f"{name}.mgz").read_bytes()
            out = container.decompress(blob, MODEL)
            data, again = make(name)
            ok = hashlib.sha256(out).hexdigest() == entry["sha256"] and again == blob
            print(f"{name:<13} {'ok' if ok else 'DIFFERS'}")
            bad += not ok
        return 1 if bad else 0
    entries = {}
    for name, (_, options) in KINDS.items():
        data, blob = make(name)
        assert container.decompress(blob, MODEL) == data
        (HERE / f"{name}.mgz").write_bytes(blob)
        info = container.scan(blob)
        entries[name] = {
            "options": options,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "mgz_bytes": len(blob),
            "mgz_sha256": hashlib.sha256(blob).hexdigest(),
            "frames": [
                # methods: Stored, Zstd, Model, Adaptive stage alone
                {"methods": "".join("SZMA"[s.method] for s in f.segments), "stage": f.stage}
                | ({"records": records_of(blob, at, f)} if f.stage else {})
                for at, f in zip(offsets(info), info.frames, strict=True)
            ],
        }
        print(f"{name:<13} {len(data):>5} -> {len(blob):>5} bytes  {entries[name]['frames']}")
    text_ = json.dumps(entries, indent=1, sort_keys=True) + "\n"
    (HERE / "MANIFEST.json").write_text(text_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
