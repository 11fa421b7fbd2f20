import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite's thread count: OMP_NUM_THREADS when set, else one.  On a machine shared with other jobs,
# two threads on small tensors spin and crawl (the tiny-pipeline and Shapes CLI modules took 3-4x the
# CPU seconds of one thread); the Shapes-model erasure tests take every core up to two (`all_threads`).
# Under pytest-xdist (`make test` runs one worker per core) each worker's share of the cores is
# what `all_threads` may take.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
SUITE_THREADS = int(os.environ.get("OMP_NUM_THREADS", 1))
ALL_THREADS = int(os.environ.get("OMP_NUM_THREADS", max(1, min(2, os.cpu_count() or 1) // _WORKERS)))
torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(scope="session")
def shapes_pipe():
    from erasekit.models.loading import load_pipeline

    return load_pipeline("shapes")


@pytest.fixture(scope="session")
def detector():
    from erasekit.world.assets_paths import load_detector

    return load_detector()


@pytest.fixture
def all_threads():
    """The Shapes-model erasure tests (a ~10M-parameter UNet, hundreds of iterations) run on every core,
    undoing their module's ``one_thread`` (meant for the tiny pipelines) for the test's duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(ALL_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and two threads crawl on a busy machine).

    Modules of tiny-pipeline tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    """A tiny randomly initialised SD-1.x pipeline (one per test module)."""
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline()
