"""Evaluation: accuracy, TPF and tokens/s of decoder settings, with environment stamps."""

from d3llm.eval.environment import environment
from d3llm.eval.runner import EvalResult, Record, evaluate

__all__ = ["environment", "EvalResult", "Record", "evaluate"]
