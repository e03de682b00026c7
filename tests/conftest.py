import os
import pathlib
import warnings

import pytest

# Keep inductor's cache inside the repo (git-ignored) so compile cost is predictable.
_ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_ROOT / ".cache" / "inductor"))
warnings.filterwarnings("ignore", message="signify has no adapter")


# The files that take longest on the 2-core CI box (cold inductor cache), longest first. Under
# `-n 2 --dist loadfile` they are handed out first, so the run ends on short files instead of
# one worker finishing a 40-80 s file while the other idles (xdist's default order, by the
# number of tests in a file, put most of these last). Only the balance depends on this list.
SLOW_FILES = (
    "test_vote.py",
    "test_compile.py",
    "test_examples.py",
    "test_nonfinite.py",
    "test_clip.py",
    "test_traced.py",
    "test_stepsize.py",
    "test_flat.py",
    "test_bench.py",
    "test_reliability_resume.py",
    "test_unbiased.py",
    "test_user_compile.py",
    "test_combinations.py",
    "test_ablate.py",
    "test_integrations.py",
    "test_blocks.py",
    "test_stepsize_repro.py",
    "test_nonsmooth.py",
    "test_integrations_dist.py",
    "test_param_kinds.py",
    "test_zero.py",
)


def pytest_configure(config):
    # keep the order below (xdist would sort the files by their number of tests)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    # xdist's controller runs no test: it starts the workers without importing torch (3 s)
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None):
        return
    import torch

    # One intra-op thread: on the 2-core CI box two threads per op cost more than they give.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps pytest's order
        rank = {name: i for i, name in enumerate(SLOW_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test draws fresh random inputs from a seed of its own (never zeros)."""
    import torch

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    yield
