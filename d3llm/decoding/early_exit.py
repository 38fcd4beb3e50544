"""Early exit: stop decoding a row once the model is sure enough, filling every mask left with one step's argmax.

Composable with every diffusion method (``early_exit=`` on any of them): the method plans, scores and commits as
always; the engine also scores the row's masked generation positions that the step forwarded, and when the rule
fires it commits every mask left with the argmax token there and the row finishes. Two rules:

* ``"prophet"`` (Prophet, Li et al., arXiv 2508.19982; pixeli99/Prophet ``generate_earlyexit.py``): the mean top-2
  **logit** gap over a monitored region, against a threshold that steps down with progress: ``exit_high`` (7.5)
  before 1/3, the midpoint (5.0) before 2/3, ``exit_low`` (2.5) after. The region is Prophet's *answer region*
  when ``exit_answer_start`` is set (generated positions ``[start, start + exit_answer_length)``, whether masked or
  not, as the authors' GSM8K script monitors the 5 positions after a forced "The answer is"); without it, our
  generalisation for prompts without such a constraint: the masks the method scores this step (its current block).
* ``"sched"`` (SchED, arXiv 2512.02892): the mean margin over **every** masked position of the generation span,
  against a threshold decreasing smoothly from ``exit_high`` to ``exit_low`` with progress (``exit_schedule``
  ``"linear"`` or ``"cosine"``; the paper's constants are not public: our defaults are Prophet's range).

Progress is the committed fraction of the generation when the step starts (Prophet's ``step / steps`` when one
token is committed per forward, which is Prophet's setting; for parallel decoders the number of steps is not known
in advance).

Compute is counted: the positions a step scores grow (the LM head runs at the monitored masks as well; the model's
layers do not). With a cache, masks outside the step's forwarded slice have no fresh logits: they are not monitored,
and a row that exits with such masks left takes one extra, uncached forward of its whole sequence to fill them,
counted in its NFE and in its forwarded positions (the masks it fills are committed at its forward index).

Dream's logits at the first position of a forwarded slice are its own token's (the next-token shift has no left
neighbour there), so that position is never monitored or filled from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import StepPlan

RULES = ("prophet", "sched")
SCHEDULES = {"prophet": ("step",), "sched": ("linear", "cosine")}


@dataclass
class ExitRule:
    """The early-exit rule of a decoder's parameters (see the module docstring)."""

    rule: str
    schedule: str
    high: float
    low: float
    answer_start: int | None
    answer_length: int
    dream: bool

    @classmethod
    def from_params(cls, params, family: str) -> ExitRule | None:
        if getattr(params, "early_exit", None) is None:
            return None
        return cls(params.early_exit, params.exit_schedule, params.exit_high, params.exit_low,
                   params.exit_answer_start, params.exit_answer_length, family == "dream")

    def threshold(self, progress: np.ndarray) -> np.ndarray:
        """``[n]`` the margin a row needs at ``progress`` ``[n]`` (committed fraction, 0 to 1)."""
        hi, lo = self.high, self.low
        if self.schedule == "step":
            return np.where(progress < 1 / 3, hi, np.where(progress < 2 / 3, (hi + lo) / 2, lo))
        if self.schedule == "linear":
            return hi + (lo - hi) * progress
        return lo + (hi - lo) * 0.5 * (1 + np.cos(math.pi * progress))  # cosine

    def positions(self, canvas: Canvas, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        """``[n, G]`` every generation position of each row and ``[n, G]`` whether the step forwards it with fresh
        logits (within the row's slice; for Dream not its first position), G the widest generation (entries past a
        row's generation repeat its first position and are never fresh)."""
        offset = np.arange(int(canvas.gen_lengths.max()))[None, :]
        in_gen = offset < canvas.gen_lengths[:, None]
        g = canvas.gen_start[:, None] + np.where(in_gen, offset, 0)
        lo = plan.start[:, None] + (1 if self.dream else 0)
        return g, (g >= lo) & (g < plan.end[:, None]) & in_gen

    def fires(self, canvas: Canvas, plan: StepPlan, logits: torch.Tensor, positions: np.ndarray,
              fresh: np.ndarray, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which rows exit now (``[n]`` bool) and the argmax tokens ``[n, G]`` at ``positions``.

        ``logits`` ``[n, G, V]`` at ``positions``; ``masked`` ``[n, G]`` the generation's masks before this step's
        commit. The mask token never counts (its logit is excluded from the gap and the argmax). A row with no
        monitored position does not exit.
        """
        logits = logits.float()
        logits[..., canvas.mask_id] = -torch.inf
        top2 = torch.topk(logits, 2, dim=-1)
        gap, tokens = rules.to_host(top2.values[..., 0] - top2.values[..., 1], top2.indices[..., 0])
        if self.rule == "sched":
            watch = masked & fresh
        elif self.answer_start is not None:
            offset = positions - canvas.gen_start[:, None]
            watch = fresh & (offset >= self.answer_start) & (offset < self.answer_start + self.answer_length)
        else:  # the masks the method scores this step
            scored = np.zeros_like(masked)
            cols = np.arange(plan.score_pos.shape[1])[None, :] < plan.score_width[:, None]
            r, c = np.nonzero(cols)
            off = plan.score_pos[r, c] - canvas.gen_start[r]
            ok = (off >= 0) & (off < masked.shape[1])
            scored[r[ok], off[ok]] = True
            watch = scored & masked & fresh
        count = watch.sum(axis=1)
        mean = np.where(count > 0, np.where(watch, gap, 0.0).sum(axis=1) / np.maximum(count, 1), -np.inf)
        progress = 1.0 - masked.sum(axis=1) / canvas.gen_lengths
        return (count > 0) & (mean >= self.threshold(progress)), tokens
