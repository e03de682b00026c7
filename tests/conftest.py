import os
import pathlib
import warnings

import pytest
import torch

# Keep inductor's cache inside the repo (git-ignored) so compile cost is predictable.
_ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_ROOT / ".cache" / "inductor"))
# One intra-op thread: on the 2-core CI box two threads per op cost more than they give.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message="signify has no adapter")


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test draws fresh random inputs from a seed of its own (never zeros)."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    yield
