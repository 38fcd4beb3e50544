"""Killing ``d3llm train`` with SIGKILL and rerunning it with --resume continues from the last complete checkpoint and
ends with exactly the weights and the log of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from d3llm.cli.main import main

ARGS = ["--model", "llada-tiny", "--steps", "120", "--batch-size", "8", "--warmup-steps", "2", "--lr", "3e-3",
        "--save-every", "10", "--keep", "3", "--eval-every", "1000", "--eval-size", "8", "--log-every", "4",
        "--threads", "1", "--no-progress"]


def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "d3llm.cli.main", "train", "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    ckpts = out / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name >= "step-000030" for p in ckpts.iterdir() if p.name.startswith("step-")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    complete = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step-"))
    last = int(complete[-1].split("-")[1])
    assert 30 <= last < 120

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckpts / complete[-1]} (step {last})" in resumed.stderr
    log = _log(out)
    assert log[-1]["step"] == 120

    reference = tmp_path / "reference"
    assert main(["train", "--out", str(reference), *ARGS]) == 0
    a, b = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log == _log(reference)  # windows of 4 steps straddle the checkpoints of every 10


def _log(out) -> list[dict]:
    """``train_log.jsonl`` without the fields that measure time."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")}
            for line in (out / "train_log.jsonl").read_text().splitlines()]
