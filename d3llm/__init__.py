"""d3llm: fast diffusion language models (LLaDA, Dream, d3LLM) in plain PyTorch.

Public API::

    model = d3llm.load_model("path/to/LLaDA-8B-Instruct")      # config.json + safetensors, no remote code
    tokenizer = d3llm.load_tokenizer("path/to/LLaDA-8B-Instruct")
    d3llm.save_model(model, "out/")                              # the public checkpoint layout
    model = d3llm.build_model("llada-tiny")                      # random tiny model for tests and demos
"""

from d3llm.cache import KVCache
from d3llm.decoding import GenerationResult, StepEvent, generate
from d3llm.errors import CheckpointError, ConfigError, D3LLMError, GenerationError
from d3llm.models import (
    NAMED_CONFIGS,
    DiffusionLM,
    DreamConfig,
    DreamLM,
    LLaDAConfig,
    LLaDALM,
    ModelOutput,
    build_model,
    encode_prompt,
    load_config,
    load_model,
    load_tokenizer,
    named_config,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "KVCache", "GenerationResult", "StepEvent", "generate", "CheckpointError", "ConfigError", "D3LLMError", "GenerationError", "NAMED_CONFIGS", "DiffusionLM",
    "DreamConfig", "DreamLM", "LLaDAConfig", "LLaDALM", "ModelOutput", "build_model", "load_config", "load_model",
    "load_tokenizer", "encode_prompt", "named_config", "save_model", "__version__",
]
