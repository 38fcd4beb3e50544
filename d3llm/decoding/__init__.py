"""Diffusion decoding: one engine, several methods (vanilla, block_entropy, fast_dllm, multi_block)."""

from d3llm.decoding.api import LengthBeyondTrainingWarning, generate
from d3llm.decoding.engine import Engine, EngineStats, RequestOutput, RowEvent
from d3llm.decoding.methods import METHODS
from d3llm.decoding.result import GenerationResult, StepEvent

__all__ = ["METHODS", "Engine", "EngineStats", "GenerationResult", "LengthBeyondTrainingWarning", "RequestOutput",
           "RowEvent", "StepEvent", "generate"]
