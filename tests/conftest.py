import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def shapes_pipe():
    from erasekit.models.loading import load_pipeline

    return load_pipeline("shapes")


@pytest.fixture(scope="session")
def detector():
    from erasekit.world.assets_paths import load_detector

    return load_detector()
