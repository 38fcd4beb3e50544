"""Resuming an interrupted run: the plan its outputs depend on, and the refusal of a rerun made with another one.

A resumable command (``d3llm trajectories extract``, ``d3llm eval --out``, ``d3llm sweep``) writes its *plan* (every
setting its results depend on: model, data, decoder, seeds...) beside its partial results. A rerun builds the plan
again and compares: the same plan continues the run, another one is refused by :func:`check_plan` with a one-line
:class:`~d3llm.errors.ConfigError` naming each differing setting with both values, and what to do instead.

Plans are compared as JSON (:func:`as_json`), so a plan read back from its file equals the one it was built from;
:func:`canonical_key` is a plan's hash, for records that must belong to one plan. No torch import here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from d3llm.errors import ConfigError

#: model files at most this big are fingerprinted by content, bigger ones (large weights) by size and mtime
CONTENT_HASH_LIMIT = 64 << 20
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
               "vocab.json", "merges.txt", "chat_template.jinja", "model.safetensors.index.json", "pytorch_model.bin")
_SHOWN = 40  # characters of a differing value quoted in the refusal


def canonical_key(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys): equal for a plan and the plan read back from its file."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from a JSON file (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj))


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def plan_differences(old: Mapping, new: Mapping, ignore: Iterable[str] = (), prefix: str = "") -> list[str]:
    """``name (OLD there, NEW now)`` for every setting that differs between two plans, nested settings named with
    dots (``decoder.threshold``); the top-level keys in ``ignore`` are not compared."""
    old, new, skip = as_json(dict(old)), as_json(dict(new)), set(ignore)
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in skip or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += plan_differences(a, b, prefix=f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key} ({_shown(a)} there, {_shown(b)} now)")
    return out


def check_plan(old: Mapping | None, new: Mapping, *, where: str, what: str, hint: str,
               ignore: Iterable[str] = ()) -> None:
    """Refuse to continue a run whose saved plan ``old`` differs from this run's ``new`` (None: nothing saved yet).

    Raises :class:`~d3llm.errors.ConfigError`: ``{where} holds {what} of another configuration (differs in: ...);
    {hint}``."""
    diffs = [] if old is None else plan_differences(old, new, ignore)
    if diffs:
        raise ConfigError(f"{where} holds {what} of another configuration (differs in: {', '.join(diffs)}); {hint}")


def model_fingerprint(folder: str | os.PathLike) -> str:
    """A short hash of what a model folder decodes with: its config, generation defaults, tokenizer and weights
    (files up to :data:`CONTENT_HASH_LIMIT` by content, bigger ones by size and modification time)."""
    from d3llm.training.checkpoint import sha256_file

    folder = Path(folder)
    names = sorted({*MODEL_FILES, *(p.name for p in folder.glob("*.safetensors"))})
    h = hashlib.sha256()
    for name in names:
        file = folder / name
        if not file.is_file():
            continue
        info = file.stat()
        content = sha256_file(file) if info.st_size <= CONTENT_HASH_LIMIT else f"{info.st_size}:{info.st_mtime_ns}"
        h.update(f"{name}\0{content}\0".encode())
    return h.hexdigest()[:16]
