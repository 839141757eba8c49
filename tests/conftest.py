import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
BIN = Path(sys.executable).parent


def megazip_cmd(*args: str) -> list[str]:
    """The installed `megazip` command with arguments."""
    return [str(BIN / "megazip"), *args]


# Tests use small models, for which one thread is fastest (and immune to a busy machine).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (restored after it): on a 2-core machine shared with
    other work, two threads contend badly. Tests that need two set it themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip("../shared/corpora is not beside the checkout")
    return CORPORA


os.environ.setdefault("PYTHONHASHSEED", "0")
