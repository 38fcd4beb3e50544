"""Evaluation: accuracy, TPF and tokens/s of decoder settings, with environment stamps; AUP (SPEC 9)."""

from d3llm.eval.aup_metric import aup, weight, within_floor
from d3llm.eval.environment import environment
from d3llm.eval.leaderboards import Leaderboard, leaderboard, read_leaderboard_yaml, reference_average
from d3llm.eval.runner import EvalResult, Record, evaluate

__all__ = ["aup", "weight", "within_floor", "Leaderboard", "leaderboard", "read_leaderboard_yaml", "reference_average",
           "environment", "EvalResult", "Record", "evaluate"]
