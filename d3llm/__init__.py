"""d3llm: fast diffusion language models (LLaDA, Dream, d3LLM) in plain PyTorch.

Public API::

    model = d3llm.load_model("path/to/LLaDA-8B-Instruct")      # config.json + safetensors, no remote code
    tokenizer = d3llm.load_tokenizer("path/to/LLaDA-8B-Instruct")
    ids = d3llm.encode_prompt(tokenizer, "What is 12 + 30?")     # the chat template, as training sees it
    result = d3llm.generate(model, [ids])                        # decoding defaults from generation_config.json
    print(result.texts(tokenizer)[0], result.tokens_per_forward)
    d3llm.save_model(model, "out/")                              # the public checkpoint layout
    model = d3llm.build_model("llada-tiny")                      # random tiny model for tests and demos

Names are imported on first use, so ``import d3llm`` (and ``d3llm --version``) does not load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "KVCache": "d3llm.cache",
    "GenerationResult": "d3llm.decoding", "StepEvent": "d3llm.decoding", "generate": "d3llm.decoding",
    "LengthBeyondTrainingWarning": "d3llm.decoding",
    "Engine": "d3llm.decoding", "RowEvent": "d3llm.decoding", "RequestOutput": "d3llm.decoding",
    "CheckpointError": "d3llm.errors", "ConfigError": "d3llm.errors", "D3LLMError": "d3llm.errors",
    "GenerationError": "d3llm.errors",
    "NAMED_CONFIGS": "d3llm.models", "DiffusionLM": "d3llm.models", "DreamConfig": "d3llm.models",
    "DreamLM": "d3llm.models", "LLaDAConfig": "d3llm.models", "LLaDALM": "d3llm.models",
    "LlamaConfig": "d3llm.models", "LlamaLM": "d3llm.models",
    "ModelOutput": "d3llm.models", "build_model": "d3llm.models", "encode_prompt": "d3llm.models",
    "load_config": "d3llm.models", "load_model": "d3llm.models", "load_tokenizer": "d3llm.models",
    "named_config": "d3llm.models", "save_model": "d3llm.models", "GenerationConfig": "d3llm.models",
}

__all__ = [*_EXPORTS, "__version__"]  # noqa: PLE0604  (the keys of _EXPORTS are strings)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'd3llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
