import os

# One thread per process keeps the suite (which also starts torchrun
# workers) from oversubscribing small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import d3llm


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["llada-tiny", "dream-tiny"])
def tiny_model(request):
    """A random tiny model of each family (fp32, CPU, eval mode)."""
    return d3llm.build_model(request.param, seed=1)


@pytest.fixture(scope="session")
def trained_models():
    """Tiny LLaDA and Dream models trained for a few seconds on a toy task (see tests/decoding_models.py)."""
    from decoding_models import train_tiny

    return {family: train_tiny(family) for family in ("llada", "dream")}
