"""Speed-related behaviour that must not change the bytes: what a command imports (the
stored/zstd path starts without torch or numba), and identical output whatever the number
of worker threads. Speed itself is shown by bench/speed.py, never by timed tests."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import random_int_model

from megazip import container

CHECK_IMPORTS = """
import sys
from megazip.cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "numba", "constriction") if m in sys.modules)
    print("imported:", ",".join(heavy) or "-")
"""


@pytest.fixture(scope="module")
def rand():
    return random_int_model(0, 0.2)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECK_IMPORTS, *map(str, args)],
        capture_output=True,
        timeout=300,
    )


@pytest.mark.parametrize("kind", ["stored", "zstd"])
def test_decompressing_stored_or_zstd_imports_neither_torch_nor_numba(rand, tmp_path, kind):
    data = bytes(range(256)) * 64 if kind == "zstd" else __import__("os").urandom(5000)
    blob = container.compress(data, rand)
    methods = {container.METHOD_NAMES[s.method] for s in container.read_header(blob).segments}
    assert methods == {kind}
    packed = tmp_path / "x.mgz"
    packed.write_bytes(blob)
    for cmd in (["decompress", packed, "-o", tmp_path / "x"], ["test", packed], ["info", packed]):
        r = run_cli(*cmd)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().splitlines()[-1] == "imported: -", (cmd, r.stdout)
    assert (tmp_path / "x").read_bytes() == data
