"""The hardware and software stamp every reported number carries (SPEC 8.1, 11.3)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(model=None, device: torch.device | str | None = None) -> dict:
    """Device, CPU/GPU names, driver and CUDA versions, torch/python/d3llm versions, git SHA, model dtype and size."""
    import d3llm

    device = torch.device(device) if device is not None else (model.device if model is not None else torch.device("cpu"))
    env = {
        "device": str(device), "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "d3llm": d3llm.__version__, "git_sha": _git_sha(),
        "attention": "torch.nn.functional.scaled_dot_product_attention", "compiled": False,
    }
    if model is not None:
        env.update(dtype=str(model.dtype).removeprefix("torch."), model=model.config.describe(),
                   model_parameters=model.num_parameters())
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def record_path(spec: str) -> str:
    """An ``argparse`` ``type`` for the ``--out`` of a benchmark: the path :func:`write_record` will write, checked
    before any work (a device, FIFO or folder there is refused with the parser's one-line error)."""
    import argparse

    from d3llm.errors import D3LLMError
    from d3llm.files import check_output_file

    try:
        check_output_file(spec, "--out")
    except D3LLMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def write_record(path, payload: dict) -> Path:
    """Write a benchmark or evaluation record as indented JSON, atomically, creating its folder; returns the path."""
    import json

    from d3llm.files import atomic_write_text, make_folder

    out = Path(path)
    make_folder(out.parent)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    return out
