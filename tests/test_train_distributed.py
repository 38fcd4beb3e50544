"""Data-parallel training: a 2-process torchrun job on CPU (gloo) trains, and sees the same batches and masks as
one process, so its losses match the single-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from d3llm.cli.main import main

ARGS = ["--model", "llada-tiny", "--steps", "8", "--batch-size", "8", "--warmup-steps", "2", "--lr", "3e-3",
        "--save-every", "4", "--eval-every", "1000", "--eval-size", "8", "--log-every", "1", "--threads", "1",
        "--no-progress"]


def _losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_two_process_torchrun_matches_one_process(tmp_path):
    two = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "d3llm.cli.main", "train", "--out", str(two), *ARGS]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "with 2 process(es), global batch 8" in run.stderr
    summary = json.loads((two / "training.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000004", "step-000008"]

    one = tmp_path / "single"
    assert main(["train", "--out", str(one), *ARGS]) == 0
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 8
    assert l1[0] == pytest.approx(l2[0], rel=1e-5)     # same weights, batch and masks: same loss
    assert l1 == pytest.approx(l2, rel=2e-3)           # and the same optimisation path
    assert l2[-1] < l2[0]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
