"""Decoding methods: each supplies the step rules of one decoder; the engine runs them all."""

from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, Params, StepPlan
from d3llm.decoding.methods.block_sequential import BlockEntropy, FastDLLM, Vanilla
from d3llm.decoding.methods.multi_block import MultiBlock

METHODS: dict[str, type[DecodingMethod]] = {m.name: m for m in (Vanilla, BlockEntropy, FastDLLM, MultiBlock)}

__all__ = ["METHODS", "Commit", "DecodingMethod", "MethodState", "Params", "StepPlan", "Vanilla", "BlockEntropy",
           "FastDLLM", "MultiBlock"]
