"""``klass``: KL-Adaptive Stability Sampling (KLASS, arXiv 2511.05664; authors' code shkim0116/KLASS,
``src/model/llada_klass.py::stable_confident_decode``), LLaDA.

Block-sequential without a cache (one full forward per step), LLaDA's quota schedule as the fallback. Every step
computes, at each position, ``p = softmax(float64(logits))`` and its KL divergence from the previous forward's
distribution at the same position, ``KL = sum p (ln(p + 1e-12) - ln(p_prev + 1e-12))`` (``p_prev = 0`` before the
first forward). A masked position of the current block is *ready* when its confidence ``p(x_hat) > threshold`` and
its last ``kl_history`` KL values are all ``< kl_threshold``; nobody is ready before ``kl_history`` steps of the
block have run (the authors' ``step >= h - 1``). A step commits every ready position (the authors'
``unmask_strategy=all``); when none is ready it commits the quota schedule's top-k by confidence. Defaults are the
authors' LLaDA GSM8K setting: ``threshold`` 0.6, ``kl_threshold`` 0.015, ``kl_history`` 2, block 64, steps equal to
the generation length.

State kept across steps (:class:`KLASSState`): the previous distribution over the current and the next block,
``[n, 2 * block, V]`` float64 on the device (the next block's is what its first KL compares with; the authors keep
the whole canvas, ``[L, V]``), and the KL ring of the current block's positions on the host. Only the current
block's KLs of its own steps are ever read, so the ring restarts with each block.

Differences from the authors' code, each a bug or quirk of theirs that we do not reproduce:

* their block loop ends after ``steps / blocks`` steps even when positions are left masked (the ready rule can
  commit fewer than the quota); here the block goes on, one token per step past its quota, until it is full;
* when fewer masked positions remain than the quota asks for, their top-k also picks non-candidates (whose
  confidence is -inf) and overwrites them; here a step commits at most the candidates;
* at temperature > 0 they compute confidence and KL from the Gumbel-noised logits; here both come from the model's
  logits and only the tokens are sampled (as in every other decoder here).

Dream's KLASS (the authors' ``dream_klass.py``: one block, Dream's step schedule as the fallback) is not here yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, RowSetup, StepPlan
from d3llm.decoding.methods.block_sequential import BlockSequential, BlockState, VanillaParams
from d3llm.errors import GenerationError

KL_EPS = 1e-12


@dataclass
class KLASSParams(VanillaParams):
    per_row = ("max_new_tokens", "steps", "temperature", "threshold")
    block_size: int = 64
    threshold: float = 0.6  # the confidence a ready position needs (strictly above)
    kl_threshold: float = 0.015
    kl_history: int = 2

    def validate(self, method: str) -> None:
        super().validate(method)
        self.check_choice(method, "remasking", self.remasking, ("low_confidence",))
        self.check_range(method, "threshold", self.threshold, 0.0, 1.0, "a confidence threshold")
        self.check_range(method, "kl_threshold", self.kl_threshold, 0.0, None, "a KL divergence in nats")
        self.check_int(method, "kl_history", self.kl_history, maximum=self.max_new_tokens,
                       why=self.show("max_new_tokens"))


@dataclass
class KLASSState(BlockState):
    """:class:`BlockState` plus ``prev_p`` ``[n, 2 * block, V]`` (device, float64: the previous forward's
    distribution at the current and the next block; zeros where there was none) and ``kl`` ``[n, block, history]``
    (host: the last KL values of the current block's positions, the newest last)."""

    row_fields = {**BlockState.row_fields, "prev_p": 0.0, "kl": 0.0}
    prev_p: torch.Tensor = None
    kl: np.ndarray = None


class KLASS(BlockSequential):
    name = "klass"
    Params = KLASSParams
    rule = "quota"

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        if self.family != "llada":
            raise GenerationError("klass: only LLaDA is supported (Dream's KLASS, with one block and Dream's step "
                                  "schedule, is not implemented yet); use eb_sampler or fast_dllm for Dream")

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> KLASSState:
        state = super().init_state(canvas, rows)
        b, n = self.params.block_size, canvas.size
        return KLASSState(**vars(state),
                          prev_p=torch.zeros((n, 2 * b, self.vocab_size), dtype=torch.float64, device=canvas.device),
                          kl=np.zeros((n, b, self.params.kl_history)))

    def plan(self, canvas: Canvas, state: KLASSState) -> StepPlan:
        b = self.params.block_size
        bs = canvas.gen_start + state.block * b
        score_pos, width = self.windows(bs, np.minimum(bs + 2 * b, canvas.lengths))
        return self.full_plan(canvas, ~state.done, score_pos, width)

    def commit(self, canvas: Canvas, state: KLASSState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        p = self.params
        b, k = p.block_size, logits.shape[1]
        pos, width = plan.score_pos, plan.score_width
        cand = self.candidates(canvas, pos, width)[:, :b]  # the current block's masks (its first b columns)
        tokens = rules.sample_rows(lambda l, t, g: rules.gumbel_sample(l, t, g, exclude=self.mask_id), logits,
                                   state.temperature, width, state.generators)
        probs = F.softmax(logits.to(torch.float64), dim=-1)  # [n, K, V]
        conf = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)
        prev = state.prev_p[:, :k]
        kl = (probs * ((probs + KL_EPS).log() - (prev + KL_EPS).log())).sum(dim=-1)
        state.prev_p[:, :k] = probs
        conf, tokens, kl = rules.to_host(conf, tokens, kl[:, :b])
        state.kl = np.concatenate([state.kl[:, :, 1:], kl[:, :, None]], axis=2)
        settled = state.step >= p.kl_history - 1
        conf = conf[:, :b]
        ready = cand & settled[:, None] & (state.kl < p.kl_threshold).all(axis=2) & (conf > state.threshold[:, None])
        i = np.minimum(state.step, state.steps_per_block - 1)
        quota = np.where(state.step < state.steps_per_block, state.quota[np.arange(canvas.size), i], 1)
        fallback = rules.commit_quota(conf, cand, quota)
        transfer = np.zeros((canvas.size, k), dtype=bool)
        transfer[:, :b] = np.where(ready.any(axis=1, keepdims=True), ready, fallback)
        return Commit(transfer, tokens, positions=pos)

    def update(self, canvas: Canvas, state: KLASSState, commit: Commit) -> None:
        block = state.block.copy()
        super().update(canvas, state, commit)
        moved = np.flatnonzero(state.block != block)
        if moved.size:  # the next block's distributions become the current block's; the ring starts again
            b = self.params.block_size
            idx = torch.as_tensor(moved, device=state.prev_p.device)
            state.prev_p[idx, :b] = state.prev_p[idx, b:]
            state.prev_p[idx, b:] = 0.0
            state.kl[moved] = 0.0
