"""Decoding methods: each supplies the step rules of one decoder; the engine runs them all."""

from d3llm.decoding.methods.adablock import AdaBlock
from d3llm.decoding.methods.autoregressive import Autoregressive
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, StepPlan
from d3llm.decoding.params import Params
from d3llm.decoding.methods.block_sequential import BlockEntropy, EBSampler, FastDLLM, Vanilla
from d3llm.decoding.methods.confidence_rules import Credit, FastDLLMFactor, Hierarchy, LocalLeap
from d3llm.decoding.methods.dream_vanilla import DreamVanilla
from d3llm.decoding.methods.klass import KLASS
from d3llm.decoding.methods.multi_block import MultiBlock

METHODS: dict[str, type[DecodingMethod]] = {
    m.name: m for m in (Vanilla, BlockEntropy, FastDLLM, MultiBlock, EBSampler, FastDLLMFactor, Hierarchy,
                         LocalLeap, Credit, KLASS, AdaBlock, Autoregressive)
}
FAMILY_METHODS: dict[tuple[str, str], type[DecodingMethod]] = {("vanilla", "dream"): DreamVanilla}


def method_class(name: str, family: str) -> type[DecodingMethod]:
    """The class implementing ``name`` for a model family (Dream has its own vanilla decoder)."""
    return FAMILY_METHODS.get((name, family), METHODS[name])

__all__ = ["METHODS", "FAMILY_METHODS", "method_class", "Autoregressive", "DreamVanilla", "Commit", "DecodingMethod", "MethodState", "Params", "StepPlan", "Vanilla", "BlockEntropy",
           "FastDLLM", "MultiBlock", "EBSampler", "FastDLLMFactor", "Hierarchy", "LocalLeap", "Credit", "KLASS", "AdaBlock"]
