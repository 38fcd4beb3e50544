"""Model families (LLaDA, Dream, the causal Llama baseline), their configs, checkpoint I/O and tokenizer loading."""

from d3llm.models.base import DiffusionLM, ModelOutput
from d3llm.models.checkpoint import build_model, load_config, load_model, save_model
from d3llm.models.configs import (
    NAMED_CONFIGS,
    DreamConfig,
    LLaDAConfig,
    LlamaConfig,
    dream_config,
    llada_config,
    llama_config,
    named_config,
)
from d3llm.models.dream import DreamLM
from d3llm.models.llada import LLaDALM
from d3llm.models.generation_config import GenerationConfig
from d3llm.models.llama import LlamaLM
from d3llm.models.prompts import encode_prompt, prompt_text
from d3llm.models.tokenizer import load_tokenizer

__all__ = [
    "DiffusionLM", "ModelOutput", "build_model", "load_config", "load_model", "save_model", "NAMED_CONFIGS",
    "DreamConfig", "LLaDAConfig", "LlamaConfig", "dream_config", "llada_config", "llama_config", "named_config",
    "DreamLM", "LLaDALM", "LlamaLM", "load_tokenizer", "encode_prompt", "prompt_text", "GenerationConfig",
]
