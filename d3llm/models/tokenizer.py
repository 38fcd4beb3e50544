"""Offline tokenizer loading with the chat template, never running code shipped with a checkpoint.

Supported folder layouts:

* ``tokenizer.json`` (+ ``tokenizer_config.json``): LLaDA and most fast tokenizers; wrapped in
  ``PreTrainedTokenizerFast``.
* ``vocab.json`` + ``merges.txt`` (+ ``tokenizer_config.json`` naming a remote ``DreamTokenizer``): Dream's
  Qwen2 byte-level BPE, rebuilt as transformers' ``Qwen2Tokenizer`` with the special tokens of
  ``added_tokens_decoder``.

``tokenizer_class`` and ``auto_map`` entries are ignored (they point at remote code). The chat template comes from
``tokenizer_config.json`` (``chat_template``), ``chat_template.jinja`` or ``chat_template.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from d3llm.errors import CheckpointError
from d3llm.files import read_json, read_text

_IGNORED_KEYS = {"auto_map", "tokenizer_class", "added_tokens_decoder", "tokenizer_file", "name_or_path",
                 "processor_class", "chat_template", "vocab_file", "merges_file"}
_LIBRARY_READ_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> Any:
    """``tokenizer_config.json`` stores special tokens as strings or serialised AddedToken dicts."""
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    return value


def _chat_template(folder: Path, config: dict) -> str | None:
    if config.get("chat_template"):
        template = config["chat_template"]
        if isinstance(template, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            return named.get("default") or next(iter(named.values()), None)
        return template
    if (folder / "chat_template.jinja").is_file():
        return read_text(folder / "chat_template.jinja", CheckpointError)
    if (folder / "chat_template.json").is_file():
        data = read_json(folder / "chat_template.json", CheckpointError)
        if not isinstance(data, dict):
            raise CheckpointError(f"{folder / 'chat_template.json'}: expected a JSON object with 'chat_template'")
        return data.get("chat_template")
    return None


def _qwen2_bpe(folder: Path, added: dict, specials: dict, kwargs: dict, config_file: Path):
    """Rebuild a Qwen2 byte-level BPE from vocab.json + merges.txt, adding ``added_tokens_decoder`` at its ids."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    backend = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), unk_token=None,
                             eos_token=None, pad_token=None).backend_tokenizer
    for idx, entry in sorted(((int(i), t) for i, t in added.items()), key=lambda e: e[0]):
        if backend.token_to_id(entry["content"]) is None:
            backend.add_tokens([AddedToken(entry["content"], special=bool(entry.get("special", True)),
                                           normalized=False, lstrip=bool(entry.get("lstrip")),
                                           rstrip=bool(entry.get("rstrip")))])
        got = backend.token_to_id(entry["content"])
        if got != idx:
            raise CheckpointError(
                f"{config_file}: added token {entry['content']!r} should have id {idx} but gets {got}; the ids in "
                f"added_tokens_decoder must follow vocab.json without gaps"
            )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("errors",)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials, **kwargs)


def load_tokenizer(path: str | os.PathLike):
    """Load the tokenizer of a model folder offline, with its chat template and special tokens.

    Returns a transformers tokenizer (``PreTrainedTokenizerFast`` / ``Qwen2Tokenizer``). Raises
    :class:`~d3llm.errors.CheckpointError` naming the folder and the files expected when none is usable.
    """
    from transformers import PreTrainedTokenizerFast

    from d3llm.assets import resolve_model, unknown_model_hint

    folder = resolve_model(path)  # a path, or a shipped model's name
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder '{folder}' does not exist{unknown_model_hint(path)}")
    config_file = folder / "tokenizer_config.json"
    config = read_json(config_file, CheckpointError) if config_file.is_file() else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    kwargs = {k: v for k, v in config.items() if k not in _IGNORED_KEYS and k not in _SPECIAL_KEYS
              and k != "additional_special_tokens"}
    specials = {k: _token_text(config[k]) for k in _SPECIAL_KEYS if config.get(k) is not None}
    extra_special = [_token_text(t) for t in config.get("additional_special_tokens") or []]
    added = config.get("added_tokens_decoder") or {}

    try:
        if (folder / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials, **kwargs)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = _qwen2_bpe(folder, added, specials, kwargs, config_file)
        else:
            raise CheckpointError(
                f"{folder} holds no tokenizer: expected tokenizer.json, or vocab.json with merges.txt"
            )
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizers/transformers raise many types for corrupt files
        for name in _LIBRARY_READ_FILES:  # read by the library, which names no file: a non-UTF-8 one is named here
            if (folder / name).is_file():
                read_text(folder / name, CheckpointError)
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {exc}") from None
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": extra_special})
    template = _chat_template(folder, config)
    if template:
        tokenizer.chat_template = template
    return tokenizer
