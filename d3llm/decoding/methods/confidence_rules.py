"""The decoder zoo's confidence rules on Fast-dLLM's frame: blocks, caches (none, prefix, dual) and Dream's
block-initial forward stay those of ``fast_dllm`` (:mod:`~d3llm.decoding.methods.block_sequential`); only the rule
that picks which candidates of a step to commit changes (and, for CreditDecoding, the logits it ranks).

* ``fast_dllm_factor`` (Fast-dLLM's factor rule, arXiv 2505.22618; dInfer ``get_transfer_index_dynamic``): rank
  the candidates by confidence and commit the longest prefix whose ranks k all have ``c_(k) >= 1 - f / (k + 1)``
  (:func:`~d3llm.decoding.rules.commit_factor`); the swept parameter is ``factor`` (default 1.0). dInfer commits
  every candidate when the first failing rank is the last one (its loop ends before it checks): a quirk we do not
  reproduce.
* ``hierarchy`` (dInfer's ``HierarchyDecoder``, arXiv 2510.08666): one commit per maximal run of masked
  candidates (its most confident one, if above ``low_threshold``), plus every candidate above ``threshold``, plus
  the most confident one (:func:`~d3llm.decoding.rules.commit_hierarchy`). Defaults: ``threshold`` 0.9 (the
  Fast-dLLM value dInfer's scripts use), ``low_threshold`` 0.4 (the class default). dInfer decodes one row at a
  time (it asserts batch 1); here rows are independent, so any batch gives each row's batch-1 tokens.
* ``local_leap`` (LocalLeap, arXiv 2510.07081): anchors at ``conf >= threshold`` (0.9) and their neighbours within
  ``radius`` (2) at ``conf >= relaxed_threshold`` (0.7) (:func:`~d3llm.decoding.rules.commit_local_leap`). Its
  code is not public: radius, relaxed threshold and "no contiguity to the anchor required" are our choices.
* ``credit`` (CreditDecoding, arXiv 2510.06133; dInfer ``CreditThresholdParallelDecoder``): every step of a block
  first decays each masked position's credit by ``decay_beta`` and adds ``p_top1 ** boost_gamma`` to the credit of
  its current top-1 token (``p``: softmax of the raw logits, float32), then ranks and samples from the fused logits
  ``l + credit_alpha * log(1 + credit)`` with Fast-dLLM's threshold rule (commit ``conf >= threshold`` plus the
  most confident). Defaults alpha 0.7, gamma 0.2, beta 0.8, threshold 0.9 (dInfer's). Credit starts at zero with
  each block. dInfer keeps the credit dense, ``[batch, block, vocabulary]``; each step adds to one token per
  position and a position is masked for at most ``block_size`` steps of its block, so a table of ``block_size``
  (token, credit) pairs per position holds it exactly (:class:`CreditState`): ``[n, block, block]`` instead of
  ``[n, block, V]``. Confidence of the fused logits is float64 here (float32 in dInfer).

All four decode LLaDA and Dream (Dream's rule is Fast-dLLM's with the rule replaced).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, RowSetup, StepPlan
from d3llm.decoding.methods.block_sequential import BlockState, FastDLLM, FastDLLMParams, VanillaParams
from d3llm.errors import GenerationError


@dataclass
class ThresholdParams(FastDLLMParams):
    """Fast-dLLM's parameters with a threshold that is always set (the quota schedule is Fast-dLLM's own)."""

    def validate(self, method: str) -> None:
        super().validate(method)
        if self.threshold is None:
            raise GenerationError(f"{method}: threshold must be a confidence threshold in [0, 1], got None"
                                  f"{self.label('threshold')} (threshold=None, LLaDA's quota schedule, is fast_dllm's)")


@dataclass
class FactorParams(VanillaParams):
    per_row = ("max_new_tokens", "steps", "temperature", "factor")
    factor: float = 1.0
    cache: str = "dual"

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "factor", self.factor, 0.0, None,
                         "the factor f of (k + 1)(1 - c_k) <= f; 0 commits one token per step")
        self.check_choice(method, "cache", self.cache, ("none", "prefix", "dual"))


@dataclass
class HierarchyParams(ThresholdParams):
    low_threshold: float = 0.4

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "low_threshold", self.low_threshold, 0.0, 1.0,
                         "the confidence a masked run's best candidate needs")


@dataclass
class LocalLeapParams(ThresholdParams):
    relaxed_threshold: float = 0.7
    radius: int = 2

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "relaxed_threshold", self.relaxed_threshold, 0.0, 1.0,
                         "the confidence an anchor's neighbour needs")
        self.check_int(method, "radius", self.radius, minimum=1, maximum=self.block_size,
                       why=f"{self.show('block_size')}")


@dataclass
class CreditParams(ThresholdParams):
    credit_alpha: float = 0.7
    boost_gamma: float = 0.2
    decay_beta: float = 0.8

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_range(method, "credit_alpha", self.credit_alpha, 0.0, None, "the weight of log(1 + credit)")
        self.check_range(method, "boost_gamma", self.boost_gamma, 0.0, None, "the exponent of the added p_top1")
        self.check_range(method, "decay_beta", self.decay_beta, 0.0, 1.0, "the credit kept from one step to the next")


class FastDLLMFactor(FastDLLM):
    name = "fast_dllm_factor"
    Params = FactorParams
    swept = "factor"

    def confidence_rule(self, conf, cand, threshold):
        return rules.commit_factor(conf, cand, threshold)


class Hierarchy(FastDLLM):
    name = "hierarchy"
    Params = HierarchyParams

    def confidence_rule(self, conf, cand, threshold):
        return rules.commit_hierarchy(conf, cand, threshold, self.params.low_threshold)


class LocalLeap(FastDLLM):
    name = "local_leap"
    Params = LocalLeapParams

    def confidence_rule(self, conf, cand, threshold):
        p = self.params
        return rules.commit_local_leap(conf, cand, threshold, p.relaxed_threshold, p.radius)


@dataclass
class CreditState(BlockState):
    """:class:`BlockState` plus each row's credit table over the positions of its current block (device tensors):
    position j of the block has credit ``value[i, j, s]`` on token ``token[i, j, s]`` (-1: free slot)."""

    row_fields = {**BlockState.row_fields, "credit_token": -1, "credit_value": 0.0}
    credit_token: torch.Tensor = None  # [n, block, block] long
    credit_value: torch.Tensor = None  # [n, block, block] float32


class Credit(FastDLLM):
    name = "credit"
    Params = CreditParams

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> CreditState:
        state = super().init_state(canvas, rows)
        b = self.params.block_size
        shape = (canvas.size, b, b)
        return CreditState(**vars(state), credit_token=torch.full(shape, -1, dtype=torch.long, device=canvas.device),
                           credit_value=torch.zeros(shape, dtype=torch.float32, device=canvas.device))

    def adjust_logits(self, canvas: Canvas, state: CreditState, logits: torch.Tensor, plan: StepPlan,
                      cand: np.ndarray) -> torch.Tensor:
        """Decay, credit the current top-1 of every masked block position, and return the fused float32 logits
        (``[n, K, V]``; only those positions change)."""
        p = self.params
        b = p.block_size
        col = plan.score_pos - (canvas.gen_start + state.block * b)[:, None]  # [n, K] column in the block
        rows, ks = np.nonzero(cand & (col >= 0) & (col < b))
        state.credit_value.mul_(p.decay_beta)
        if rows.size == 0:
            return logits
        fused = logits.to(torch.float32, copy=True)  # never the caller's tensor
        device = logits.device
        r = torch.as_tensor(rows, device=device)
        k = torch.as_tensor(ks, device=device)
        j = torch.as_tensor(col[rows, ks], device=device)
        top_p, top_tok = F.softmax(fused[r, k], dim=-1).max(dim=-1)  # [m]
        table = state.credit_token[r, j]  # [m, block]
        match = table == top_tok[:, None]
        slot = torch.where(match.any(dim=1), match.int().argmax(dim=1), (table >= 0).sum(dim=1))
        state.credit_token[r, j, slot] = top_tok
        state.credit_value[r, j, slot] += top_p.pow(p.boost_gamma)
        bonus = state.credit_value[r, j].log1p().mul_(p.credit_alpha)  # free slots: log(1 + 0) = 0 on token 0
        fused[r, k] = fused[r, k].scatter_add_(1, state.credit_token[r, j].clamp(min=0), bonus)
        return fused

    def update(self, canvas: Canvas, state: CreditState, commit: Commit) -> None:
        block = state.block.copy()
        super().update(canvas, state, commit)
        moved = np.flatnonzero(state.block != block)
        if moved.size:  # a new block starts with no credit
            idx = torch.as_tensor(moved, device=state.credit_token.device)
            state.credit_token[idx] = -1
            state.credit_value[idx] = 0.0
