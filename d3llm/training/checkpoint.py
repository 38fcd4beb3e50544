"""Training checkpoints: written atomically, verified before they are loaded.

Layout of ``OUT/checkpoints/step-000500/``::

    model/                 config.json + model.safetensors + tokenizer files (a loadable model folder)
    optimizer.pt           the optimizer's state_dict: plain tensors, numbers and lists (torch.save)
    trainer_state.json     step, the training options, metrics so far
    extra.safetensors      (some objectives) tensors needed to resume beyond the model folder, e.g. LoRA adapters
    manifest.json          size and SHA-256 of every other file; written last

A checkpoint is assembled in a hidden ``.step-000500.partial-*`` folder and renamed into place only once complete,
so a process killed while saving (even with SIGKILL) leaves no ``step-*`` folder behind, only a partial folder that
the next run removes; a save the system refuses (full disk, read-only folder) removes its partial folder and raises
a :class:`~d3llm.errors.WriteError` naming the file and the cause. Loading checks every file against the manifest
first: a truncated, corrupted or missing file is a :class:`~d3llm.errors.CheckpointError` naming the file, never a
silent load. ``optimizer.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from d3llm.errors import CheckpointError, WriteError
from d3llm.files import atomic_write, atomic_write_text, make_folder, read_json

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
EXTRA = "extra.safetensors"
MODEL_DIR = "model"
_STEP_RE = re.compile(r"^step-(\d+)$")
FORMAT_VERSION = 1


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file's content (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_torch(obj: Any, file: Path) -> None:
    """``torch.save(obj)`` into ``file`` through a Python file object, so that a refused write raises the system's
    own error, or torch's ``unexpected pos`` with that error as its context (given a path, torch's writer reports a
    full disk only as ``unexpected pos N vs M``, without the cause; see :func:`d3llm.files.write_failure`)."""
    with open(file, "wb") as fh:
        torch.save(obj, fh)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class CheckpointInfo:
    """A checkpoint folder and its step."""

    path: Path
    step: int


def checkpoint_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | os.PathLike) -> list[CheckpointInfo]:
    """Complete-looking ``step-N`` folders under ``OUT/checkpoints``, oldest first (partial folders excluded)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir():
            found.append(CheckpointInfo(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def remove_partial(out: str | os.PathLike) -> list[Path]:
    """Delete folders left by saves that were interrupted; returns them."""
    folder = checkpoint_dir(out)
    removed = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(".step-") and ".partial" in child.name:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def save_checkpoint(out: str | os.PathLike, step: int, model, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], tokenizer_dir: str | os.PathLike | None, keep: int | None = None,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``step`` atomically; keep only the newest ``keep`` checkpoints (None: all). ``extra``
    tensors (if any) go to ``extra.safetensors``."""
    from safetensors.torch import save_file

    from d3llm.models.checkpoint import save_model

    root = make_folder(checkpoint_dir(out))
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        make_folder(tmp)
        save_model(model, tmp / MODEL_DIR, tokenizer=tokenizer_dir)
        opt_state = optimizer.state_dict()
        atomic_write(tmp / OPTIMIZER, lambda p: save_torch(opt_state, p))
        if extra:
            tensors = {k: v.detach().cpu().contiguous() for k, v in extra.items()}
            atomic_write(tmp / EXTRA, lambda p: save_file(tensors, str(p)))
        atomic_write_text(tmp / STATE, json.dumps({**state, "step": step, "format": FORMAT_VERSION}, indent=2) + "\n")
        files = {}
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = file.relative_to(tmp).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # a re-run that reached the same step: replace it
            trash = root / f".step-{step:06d}.partial-old-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):  # a WriteError from a file of the checkpoint, or a refused rename
            raise _refused_save(exc, tmp, final) from None
        raise
    if keep is not None and keep > 0:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
    return final


def _refused_save(exc: OSError, tmp: Path, final: Path) -> WriteError:
    """A write refused while assembling checkpoint ``final`` in ``tmp``, named as the file of ``final`` it was."""
    if isinstance(exc, WriteError):
        reason, path = exc.reason, Path(exc.path)
    else:
        reason, path = exc.strerror or str(exc), Path(exc.filename or tmp)
    file = final / path.relative_to(tmp) if path.is_relative_to(tmp) else final
    return WriteError(file, reason, errno=exc.errno,
                      message=f"cannot write {file}: {reason} (the incomplete checkpoint was removed)")


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check every file of a checkpoint against its manifest; return the manifest. Raises CheckpointError."""
    folder = Path(path)
    hint = (f"delete {folder} to resume from the previous checkpoint (or restart without --resume)")
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it is incomplete or was not written by "
                              f"d3llm train; {hint}")
    try:
        manifest = read_json(manifest_file, CheckpointError)
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{manifest_file} is corrupted ({exc}); {hint}") from None
    for rel, meta in files.items():
        file = folder / rel
        if not file.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {rel} listed in {MANIFEST} is missing; {hint}")
        size = file.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(
                f"checkpoint {folder}: {rel} is truncated or corrupted ({size} bytes, the manifest says "
                f"{meta.get('size')}); {hint}"
            )
        if sha256_file(file) != meta.get("sha256"):
            raise CheckpointError(
                f"checkpoint {folder}: {rel} is corrupted (SHA-256 differs from the manifest); {hint}"
            )
    return manifest


def load_extra(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor] | None:
    """The ``extra.safetensors`` tensors of a (verified) checkpoint, or None when it has none."""
    from safetensors.torch import load_file

    file = Path(path) / EXTRA
    return load_file(str(file), device=str(device)) if file.is_file() else None


def load_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[Any, dict, dict]:
    """Verify, then load a checkpoint: returns (model, optimizer state_dict, trainer state)."""
    from d3llm.models.checkpoint import load_model

    folder = Path(path)
    verify_checkpoint(folder)
    model = load_model(folder / MODEL_DIR, device=device)
    try:
        opt_state = torch.load(folder / OPTIMIZER, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(f"{folder / OPTIMIZER}: cannot load the optimizer state with weights_only=True "
                              f"({str(exc).splitlines()[0]})") from None
    return model, opt_state, read_state(folder)


def read_state(path: str | os.PathLike) -> dict:
    """The ``trainer_state.json`` of a checkpoint (step, options, history, the log's running window)."""
    file = Path(path) / STATE
    state = read_json(file, CheckpointError)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{file}: expected a JSON object with an integer 'step'")
    return state
