import pytest
import torch

import d3llm


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["llada-tiny", "dream-tiny"])
def tiny_model(request):
    """A random tiny model of each family (fp32, CPU, eval mode)."""
    return d3llm.build_model(request.param, seed=1)
