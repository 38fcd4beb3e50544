"""``generation_config.json``: how a model folder says it should be decoded (the Hugging Face convention).

The file sits beside ``config.json``. It keeps the keys transformers knows (``max_new_tokens``, ``temperature``,
``do_sample``, ``top_p``, ``top_k``, ``eos_token_id``, ``pad_token_id``, ``bos_token_id``) and adds d3llm's decoder
keys, flat, with the names ``d3llm.generate`` takes::

    {
      "max_new_tokens": 48, "eos_token_id": 1, "temperature": 0.0,
      "method": "multi_block", "block_size": 16, "threshold": 0.2,
      "block_add_threshold": 0.1, "decoded_token_threshold": 0.95, "cache_delay_iter": 1, "early_stop": true,
      "methods": {"fast_dllm": {"threshold": 0.9, "cache": "dual"}}
    }

How the keys apply (:func:`GenerationConfig.defaults_for`): ``method`` is the decoder used when the caller names
none. Every other top-level key is a default for any method that has that parameter (``max_new_tokens`` and
``block_size`` serve every decoder), except ``threshold``, whose meaning differs between methods (an entropy in
nats for ``multi_block``/``block_entropy``, a confidence for ``fast_dllm``): it applies to ``method`` only.
``methods.<name>`` holds defaults for one other method. ``do_sample: false`` means greedy (temperature 0), as in
transformers. Keys d3llm does not know (``transformers_version``, ``max_length``, ...) are kept and ignored.

``max_trained_new_tokens`` (optional, a positive int) is no decoder parameter: it declares the longest canvas, in new
tokens, the model's training used. Decoding a longer one still works, but answers may degrade there, so
``d3llm.generate`` and ``d3llm serve`` warn once when asked for more (:attr:`GenerationConfig.max_trained_new_tokens`).

Values are checked where they are used, by the decoder that receives them, and a bad one is reported as a default
from this file. Only the structure is checked on reading: ``method`` names a decoder, ``methods`` maps decoder
names to objects, ``max_trained_new_tokens`` is a positive int.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d3llm.errors import CheckpointError
from d3llm.files import atomic_write_text, read_json

GENERATION_CONFIG_NAME = "generation_config.json"
METHOD_ONLY_KEYS = frozenset({"threshold"})  # its meaning differs between methods
MAX_TRAINED_KEY = "max_trained_new_tokens"  # the longest canvas the model's training used (not a decoder parameter)
# keys that are not decoder parameters of ours (transformers' own, read elsewhere or ignored; our training record)
_NOT_PARAMETERS = frozenset({"method", "methods", "do_sample", "eos_token_id", "pad_token_id", "bos_token_id",
                             "mask_token_id", "transformers_version", "max_length", "_from_model_config",
                             MAX_TRAINED_KEY})


# Decoding defaults the trainer writes for the models it trains (measured on the shipped arith teacher at 48 new
# tokens: 99.4% exact match on 500 held-out problems at 9.4 tokens per forward; docs/training.md "The shipped teacher").
TRAINED_MODEL_DEFAULTS = {
    "temperature": 0.0, "method": "multi_block", "threshold": 0.2, "block_add_threshold": 0.1,
    "decoded_token_threshold": 0.95, "cache_delay_iter": 2, "refresh_interval": 3, "early_stop": True,
}


@dataclass
class GenerationConfig:
    """The decoding defaults of a model folder.

    Attributes:
        values: the file's content (every key, known or not).
        path: the file it was read from, for messages (None for one built in memory).
    """

    values: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    # -- reading and writing -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], path: str | None = None) -> GenerationConfig:
        from d3llm.decoding.methods import METHODS

        known = tuple(METHODS)
        where = path or GENERATION_CONFIG_NAME
        if not isinstance(values, dict):
            raise CheckpointError(f"{where}: expected a JSON object, got {type(values).__name__}")
        method = values.get("method")
        if method is not None and method not in known:
            raise CheckpointError(f"{where}: key 'method' is {method!r}; expected one of {', '.join(known)}")
        per_method = values.get("methods", {})
        if not isinstance(per_method, dict) or not all(isinstance(v, dict) for v in per_method.values()):
            raise CheckpointError(f"{where}: key 'methods' must map method names to objects of parameters, got "
                                  f"{per_method!r}")
        unknown = sorted(set(per_method) - set(known))
        if unknown:
            raise CheckpointError(f"{where}: key 'methods' names unknown method(s) {', '.join(map(repr, unknown))}; "
                                  f"expected some of {', '.join(known)}")
        config = cls(values=dict(values), path=path)
        config.max_trained_new_tokens  # noqa: B018  (a bad value is an error on reading, naming the file and key)
        return config

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GenerationConfig | None:
        """The folder's ``generation_config.json``, or None when it has none (``folder`` may be a shipped model's
        name)."""
        from d3llm.assets import resolve_model

        file = resolve_model(folder) / GENERATION_CONFIG_NAME
        if not file.is_file():
            return None
        return cls.from_dict(read_json(file, CheckpointError), str(file))

    def to_json(self) -> str:
        return json.dumps(self.values, indent=2) + "\n"

    def save(self, folder: str | os.PathLike) -> Path:
        file = Path(folder) / GENERATION_CONFIG_NAME
        atomic_write_text(file, self.to_json())
        return file

    @classmethod
    def for_trained_model(cls, response_length: int, eos_token_id: int | None, pad_token_id: int | None = None,
                          base: GenerationConfig | None = None) -> GenerationConfig:
        """The defaults for a model trained to answer in ``response_length`` tokens: that many new tokens, blocks of
        32, 16 or 8 (the largest that divides it), :data:`TRAINED_MODEL_DEFAULTS`; ``base`` (the folder a model was
        fine-tuned from) keeps its other keys."""
        block = next((b for b in (32, 16, 8) if response_length % b == 0), response_length)
        values = {**TRAINED_MODEL_DEFAULTS, **(base.values if base is not None else {})}
        values.update(max_new_tokens=response_length, block_size=block)
        values.update({k: v for k, v in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id))
                       if v is not None})
        order = ["max_new_tokens", "eos_token_id", "pad_token_id", "temperature", "method", "block_size"]
        return cls.from_dict({**{k: values[k] for k in order if k in values}, **values})

    # -- what decoders read --------------------------------------------------------------------------------------
    @property
    def method(self) -> str | None:
        return self.values.get("method")

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-text id (the first one when the file lists several stop ids)."""
        eos = self.values.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return eos

    @property
    def max_trained_new_tokens(self) -> int | None:
        """The longest canvas (new tokens) the model's training used, as the file declares it (key
        ``max_trained_new_tokens``); None when it does not. Not a decoder parameter: decoders never receive it."""
        value = self.values.get(MAX_TRAINED_KEY)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{self.source}: key '{MAX_TRAINED_KEY}' must be a positive integer (the longest "
                                  f"canvas, in new tokens, the model's training used), got {value!r}")
        return value

    @property
    def source(self) -> str:
        return self.path or GENERATION_CONFIG_NAME

    def defaults_for(self, method: str) -> dict[str, Any]:
        """Parameter defaults for decoding with ``method`` (see the module docstring); names the method does not
        take are left in (the caller keeps only its method's parameters)."""
        out = {k: v for k, v in self.values.items() if k not in _NOT_PARAMETERS and k not in METHOD_ONLY_KEYS}
        if self.values.get("do_sample") is False:
            out["temperature"] = 0.0
        if method == self.method:
            out.update({k: self.values[k] for k in METHOD_ONLY_KEYS if k in self.values})
        out.update(self.values.get("methods", {}).get(method, {}))
        return out

    def describe(self) -> dict[str, Any]:
        """The decoder settings, for ``d3llm info``."""
        return {k: v for k, v in self.values.items() if k != "transformers_version"}


def beyond_training_message(trained: int, canvas: int, source: str, asked: str = "") -> str:
    """The warning for a canvas of ``canvas`` new tokens beyond the ``trained`` one a model folder declares
    (``source``: the file); ``asked`` adds how the request came to that canvas."""
    return (f"the model was trained on canvases up to {trained} new tokens ({MAX_TRAINED_KEY} in {source}) and "
            f"this request asks for {canvas}{asked}, so quality may degrade (warned once per process)")
