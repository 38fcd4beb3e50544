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
from d3llm.decoding.methods.base import Commit, DecodingMethod, MethodState, RowSetup, StepPlan
from d3llm.decoding.params import Params
from d3llm.errors import GenerationError

_SCORES = {"maskgit_plus": "confidence", "topk_margin": "margin", "entropy": "neg_entropy"}


@dataclass
class DreamVanillaParams(Params):
    per_row = ("max_new_tokens", "steps", "temperature")
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
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_steps(method)
        if self.block_size is not None and self.block_size != self.max_new_tokens:
            raise GenerationError(
                f"{method}: {self.show('block_size')} is not supported on Dream, whose vanilla decoder treats "
                f"the whole generation ({self.max_new_tokens} tokens) as one block; omit block_size"
            )
        self.check_temperature(method)
        self.check_range(method, "top_p", self.top_p, 0.0, 1.0, "nucleus probability mass", allow_none=True)
        self.check_int(method, "top_k", self.top_k, allow_none=True)
        self.check_choice(method, "alg", self.alg, ("origin", *_SCORES))
        self.check_temperature(method, "alg_temp", allow_none=True)
        self.check_range(method, "eps", self.eps, 0.0, 1.0, "the final timestep")


@dataclass
class DreamVanillaState(MethodState):
    row_fields = {"step": 0, "steps": 1, "timesteps": 0.0, "first": 0, "temperature": 0.0, "generators": None}
    step: np.ndarray  # [n] steps taken
    steps: np.ndarray  # [n] steps of the row
    timesteps: np.ndarray  # [n, max steps + 1] float32 linspace(1, eps, steps + 1) of each row
    first: np.ndarray  # [n] first candidate position (0 when the prompt holds masks)
    temperature: np.ndarray  # [n]
    generators: list  # [n]


class DreamVanilla(DecodingMethod):
    name = "vanilla"
    Params = DreamVanillaParams

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> DreamVanillaState:
        steps = self.row_values(rows, "steps", np.int64)
        table = np.zeros((len(rows), int(steps.max()) + 1), dtype=np.float32)
        for i, k in enumerate(steps.tolist()):  # torch's float32 linspace, as the reference computes it
            table[i, : k + 1] = torch.linspace(1, self.params.eps, k + 1).numpy()
        return DreamVanillaState(step=np.zeros(len(rows), dtype=np.int64), steps=steps, timesteps=table,
                                 first=canvas.first_candidates(),
                                 temperature=self.row_values(rows, "temperature"),
                                 generators=[r.generator for r in rows])

    def plan(self, canvas: Canvas, state: DreamVanillaState) -> StepPlan:
        score_pos, width = self.windows(state.first, canvas.lengths)
        return self.full_plan(canvas, state.step < state.steps, score_pos, width)

    def commit(self, canvas: Canvas, state: DreamVanillaState, logits: torch.Tensor, plan: StepPlan) -> Commit:
        p = self.params
        pos, width = plan.score_pos, plan.score_width
        n, k = pos.shape
        cand = self.candidates(canvas, pos, width)
        rows = np.arange(n)
        t, s = state.timesteps[rows, state.step], state.timesteps[rows, state.step + 1]
        ratio = np.float32(1) - s / t  # float32, as the reference's 1 - s / t
        last = state.step == state.steps - 1
        score_name = "confidence" if p.alg == "origin" else _SCORES[p.alg]
        score, tokens = rules.sample_rows(
            lambda l, temp, g: rules.dream_sample(l, temp, p.top_p, p.top_k, score_name, g, exclude=self.mask_id),
            logits, state.temperature, width, state.generators)
        if p.alg == "origin":
            u = rules.random_rows(width, k, state.generators, logits.device, dtype=torch.float32)
            u, tokens = rules.to_host(u, tokens)
            chance = np.where(last, 1.0, ratio.astype(np.float64))
            return Commit(cand & (u < chance[:, None]), tokens, positions=pos)
        masks = cand.sum(axis=1)
        # float32 flooring of masks * (1 - s/t), as the reference computes it
        count = np.where(last, masks, (masks.astype(np.float32) * ratio).astype(np.int64))
        if not p.alg_temp:
            score, tokens = rules.to_host(score, tokens)
            return Commit(rules.commit_quota(score, cand, count), tokens, positions=pos)
        cand_t = torch.from_numpy(cand).to(logits.device)
        transfer = torch.zeros_like(cand_t)  # on the device: the picks reach the host with the tokens, in one copy
        for i in np.flatnonzero(count > 0):  # positions sampled from softmax(score / alg_temp), per row
            w = int(width[i])
            weights = torch.softmax(torch.where(cand_t[i : i + 1, :w], score[i : i + 1, :w], -rules.INF).float()
                                    / p.alg_temp, dim=-1)
            picks = torch.multinomial(weights, int(count[i]), generator=state.generators[i])
            transfer[i, picks[0]] = True
        transfer, tokens = rules.to_host(transfer, tokens)
        return Commit(transfer & cand, tokens, positions=pos)

    def update(self, canvas: Canvas, state: DreamVanillaState, commit: Commit) -> None:
        state.step += 1
