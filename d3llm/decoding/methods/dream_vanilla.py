"""Vanilla Dream decoding (SPEC 4.2): one block over the whole generation, ``steps`` forwards on a timestep schedule.

With ``ts = linspace(1, eps, steps + 1)``, step i (t = ts[i], s = ts[i+1]) works on the masked positions:

* ``alg="origin"``: every mask is unmasked independently with probability ``1 - s/t`` (all at the last step), with
  a token sampled from the processed distribution (temperature, top-p, top-k);
* ``"maskgit_plus"`` / ``"topk_margin"`` / ``"entropy"``: tokens from the processed distribution, scored by the
  chosen token's probability, the top-1 minus top-2 margin, or the negative entropy; the
  ``int(masks * (1 - s/t))`` best (all remaining at the last step) are committed, or positions are sampled from
  ``softmax(score / alg_temp)`` when ``alg_temp`` > 0.

NFE is exactly ``steps``: flooring makes some steps commit nothing and the last one flush the rest, so "one token
per forward" is only nominal here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, StepPlan
from d3llm.decoding.params import Params
from d3llm.errors import GenerationError

_SCORES = {"maskgit_plus": "confidence", "topk_margin": "margin", "entropy": "neg_entropy"}


@dataclass
class DreamVanillaParams(Params):
    steps: int | None = None  # None: follows max_new_tokens
    max_new_tokens: int = 128
    block_size: int | None = None  # accepted only as the whole generation: Dream's vanilla decoder has one block
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg: str = "entropy"  # the evaluation scripts' choice; Dream's generation config defaults to the random "origin"
    alg_temp: float | None = None
    eps: float = 1e-3

    derived_steps = True
    no_folder_default = frozenset({"block_size"})  # one block over the whole generation, whatever the folder says

    def validate(self, method: str) -> None:
        self.check_int(method, "steps", self.steps)
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        if self.block_size is not None and self.block_size != self.max_new_tokens:
            raise GenerationError(
                f"{method}: {self.show('block_size')} is not supported on Dream, whose vanilla decoder treats "
                f"the whole generation ({self.max_new_tokens} tokens) as one block; omit block_size"
            )
        self.check_range(method, "temperature", self.temperature, 0.0, None, "sampling temperature")
        self.check_range(method, "top_p", self.top_p, 0.0, 1.0, "nucleus probability mass", allow_none=True)
        self.check_int(method, "top_k", self.top_k, allow_none=True)
        self.check_choice(method, "alg", self.alg, ("origin", *_SCORES))
        self.check_range(method, "alg_temp", self.alg_temp, 0.0, None, "position sampling temperature",
                         allow_none=True)
        self.check_range(method, "eps", self.eps, 0.0, 1.0, "the final timestep")


@dataclass
class DreamVanillaState(MethodState):
    row_fields = ()
    step: int = 0
    first: int = 0  # first candidate column (0 when prompts hold masks)


class DreamVanilla(DecodingMethod):
    name = "vanilla"
    Params = DreamVanillaParams

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.timesteps = torch.linspace(1, params.eps, params.steps + 1)

    def init_state(self, canvas: Canvas) -> DreamVanillaState:
        has = bool((canvas.x[:, : canvas.gen_start] == canvas.mask_id).any())
        return DreamVanillaState(first=0 if has else canvas.gen_start)

    def plan(self, canvas: Canvas, state: DreamVanillaState, step: int) -> StepPlan:
        return self.full_plan(canvas, np.full(canvas.size, state.step < self.params.steps))

    def commit(self, canvas: Canvas, state: DreamVanillaState, logits: torch.Tensor, offset: int,
               plan: StepPlan) -> Commit:
        p, i = self.params, state.step
        w0, w1 = state.first, canvas.length
        cand = canvas.x[:, w0:w1] == canvas.mask_id
        window = logits[:, w0 - offset : w1 - offset]
        t, s = self.timesteps[i], self.timesteps[i + 1]
        last = i == p.steps - 1
        if p.alg == "origin":
            _, tokens = rules.dream_sample(window, p.temperature, p.top_p, p.top_k, "confidence", self.generator,
                                           exclude=self.mask_id)
            u, tokens = rules.to_host(torch.rand(cand.shape, device=window.device, generator=self.generator), tokens)
            chance = 1.0 if last else float(1 - s / t)
            return Commit(cand & (u < chance), tokens, start=w0)
        score, tokens = rules.dream_sample(window, p.temperature, p.top_p, p.top_k, _SCORES[p.alg], self.generator,
                                           exclude=self.mask_id)
        masks = cand.sum(axis=1)
        # float32 flooring of masks * (1 - s/t), as the reference computes it
        count = masks if last else (torch.from_numpy(masks).float() * (1 - s / t)).long().numpy()
        if not p.alg_temp:
            score, tokens = rules.to_host(score, tokens)
            return Commit(rules.commit_quota(score, cand, count), tokens, start=w0)
        k_max = int(count.max())
        transfer = np.zeros_like(cand)
        if k_max > 0:
            cand_t = torch.from_numpy(cand).to(window.device)
            weights = torch.softmax(torch.where(cand_t, score, -rules.INF).float() / p.alg_temp, dim=-1)
            picks, tokens = rules.to_host(torch.multinomial(weights, k_max, generator=self.generator), tokens)
            keep = np.arange(k_max)[None, :] < count[:, None]
            np.put_along_axis(transfer, picks, keep, axis=1)
        else:
            tokens = rules.to_host(tokens)[0]
        return Commit(transfer & cand, tokens, start=w0)

    def update(self, canvas: Canvas, state: DreamVanillaState, commit: Commit) -> None:
        state.step += 1
