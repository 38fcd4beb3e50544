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


@pytest.fixture
def error_line(capsys):
    """``error_line(command)``: the one ``d3llm <command>: error: ...`` line a command run in-process printed on
    stderr since the last read. Progress and log lines are allowed beside it; a second d3llm line or a traceback
    fails the test."""

    def read(command: str) -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("d3llm ") or "Traceback" in line]
        assert len(lines) == 1 and lines[0].startswith(f"d3llm {command}: error: "), err
        return lines[0]

    return read
