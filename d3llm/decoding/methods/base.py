"""The interface between the decoding engine and a decoding method.

The engine (:mod:`d3llm.decoding.engine`) owns the loop, the batch (rows join and leave between steps), the KV
cache, forward passes, NFE accounting, timing and events. A method only supplies the step rules, SGLang-style:

0. :meth:`DecodingMethod.init_state` -- the state of rows that join (their per-row parameters come with them);
1. :meth:`DecodingMethod.plan` -- which rows still decode and, per row, which positions ``[start, end)`` to
   forward, how long the cache is afterwards and at which positions it needs logits (a method may also edit the
   canvas here, e.g. early stop);
2. :meth:`DecodingMethod.commit` -- given the logits at those positions, which masked positions to fill with which
   tokens;
3. :meth:`DecodingMethod.update` -- bookkeeping once the commit is applied.

Rows are independent: every array of a method's state is per row, a row's geometry (prompt length, generation
length, blocks) is its own, and its random draws come from its own generator over its own entries only, so what a
row decodes never depends on the rows around it. Work is split by size: the device runs the model and scores the
positions a step may commit (entropies, confidences, tokens over the vocabulary), one transfer brings those
``[rows, positions]`` scores to the host, and everything else -- the canvas, block states, commit rules -- is
small vectorised numpy on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from d3llm.decoding.canvas import Canvas
from d3llm.decoding.params import Params
from d3llm.decoding.rows import RowTable


@dataclass
class StepPlan(RowTable):
    """What each active row does in this iteration (arrays over the active rows).

    Attributes:
        run: ``[n]`` bool; False = the row is finished (it leaves the batch before the forward).
        start, end: ``[n]`` the row forwards its positions ``[start, end)`` (without a cache: ``[0, length)``).
        cache_length: ``[n]`` the row's valid cached prefix after the forward (cache methods only).
        score_pos: ``[n, K]`` the positions whose logits :meth:`DecodingMethod.commit` receives, in the order it
            wants them; only the first ``score_width[i]`` entries of row i are meaningful (they lie in the row's
            forwarded slice), later entries are padding whose logits are unspecified.
        score_width: ``[n]`` the meaningful entries of each row (also the width of its random draws).
    """

    row_fields = {"run": False, "start": 0, "end": 0, "cache_length": 0, "score_pos": 0, "score_width": 0}

    run: np.ndarray
    start: np.ndarray
    end: np.ndarray
    cache_length: np.ndarray | None
    score_pos: np.ndarray
    score_width: np.ndarray


@dataclass
class Commit:
    """What a step commits (host arrays): where ``transfer`` (``[n, K]`` bool) is set, position ``positions``
    (``[n, K]``) gets ``tokens``. Entries where ``transfer`` is False (padding included) are ignored."""

    transfer: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray

    def apply(self, x: np.ndarray) -> None:
        """Write the committed tokens into the canvas ``x`` ``[n, W]`` (in place)."""
        rows, cols = np.nonzero(self.transfer)
        x[rows, self.positions[rows, cols]] = self.tokens[rows, cols]

    def per_block(self, gen_start: np.ndarray, block_size: int, blocks: int) -> np.ndarray:
        """``[n, blocks]`` committed positions in each generation block (prompt positions belong to none)."""
        offset = self.positions - gen_start[:, None]
        hit = self.transfer & (offset >= 0)
        n = self.transfer.shape[0]
        flat = (np.arange(n)[:, None] * blocks + offset // block_size)[hit]
        return np.bincount(flat, minlength=n * blocks).reshape(n, blocks)


class MethodState(RowTable):
    """Per-row method state (see :class:`~d3llm.decoding.rows.RowTable`)."""


@dataclass
class RowSetup:
    """What a method needs to know about a row that joins: its resolved parameters (the shared ones equal the
    method's), its end-of-text id (None: none) and its random generator (None: torch's global one)."""

    params: Params
    eos_id: int | None
    generator: torch.Generator | None


class DecodingMethod:
    """Step rules of one decoding method (see the module docstring).

    ``params`` are the parameters shared by every row (those not in ``Params.per_row``); the per-row ones come with
    each row in :meth:`init_state`. A method never loops over rows on the hot path: its state is arrays over rows.

    ``causal``: the method decodes causal (autoregressive) models; diffusion methods (False) need a bidirectional
    one. ``d3llm.generate`` refuses a model of the other kind.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    causal: ClassVar[bool] = False

    def __init__(self, params: Params, *, family: str, mask_id: int, vocab_size: int | None = None) -> None:
        self.params = params
        self.family = family
        self.mask_id = mask_id
        self.vocab_size = vocab_size  # the logits' last axis (a method keeping per-token state sizes it by this)

    @property
    def uses_cache(self) -> bool:
        return False

    def check_row(self, params: Params) -> None:
        """Reject a row's resolved parameters that this method cannot decode with (:class:`GenerationError`);
        ``Params.validate`` has already checked each value on its own."""

    def init_state(self, canvas: Canvas, rows: list[RowSetup]) -> MethodState:  # pragma: no cover - abstract
        """The state of rows that join (``canvas`` holds only them)."""
        raise NotImplementedError

    def plan(self, canvas: Canvas, state: MethodState) -> StepPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self, canvas: Canvas, state: MethodState, logits: torch.Tensor, plan: StepPlan
               ) -> Commit:  # pragma: no cover - abstract
        """``logits`` ``[n, K, V]``: the logits at ``plan.score_pos``."""
        raise NotImplementedError

    def update(self, canvas: Canvas, state: MethodState, commit: Commit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------------------------
    @staticmethod
    def row_values(rows: list[RowSetup], name: str, dtype=np.float64) -> np.ndarray:
        """``[n]`` a per-row parameter of the joining rows (None becomes NaN)."""
        return np.array([np.nan if getattr(r.params, name) is None else getattr(r.params, name) for r in rows],
                        dtype=dtype)

    @staticmethod
    def windows(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row windows ``[lo, hi)`` as a ``[n, K]`` table of positions (``K = max(hi - lo)``; entries past a
        row's window repeat its first position) and the widths ``[n]``."""
        width = hi - lo
        if width.size == 1:
            return (lo[:, None] + np.arange(int(width[0]))), width
        cols = np.arange(int(width.max()))
        return lo[:, None] + np.where(cols < width[:, None], cols, 0), width

    @staticmethod
    def candidates(canvas: Canvas, pos: np.ndarray, width: np.ndarray) -> np.ndarray:
        """``[n, K]`` which entries of a :meth:`windows` table are masked positions (entries past a row's width:
        False)."""
        if len(width) == 1 and width[0] == pos.shape[1]:  # one window of consecutive positions
            lo = int(pos[0, 0])
            return canvas.x[:, lo : lo + pos.shape[1]] == canvas.mask_id
        return (np.take_along_axis(canvas.x, pos, axis=1) == canvas.mask_id) & (np.arange(pos.shape[1]) <
                                                                               width[:, None])

    @staticmethod
    def full_plan(canvas: Canvas, run: np.ndarray, score_pos: np.ndarray, score_width: np.ndarray) -> StepPlan:
        """Uncached methods: every row forwards its whole sequence."""
        n = canvas.size
        return StepPlan(run=run, start=np.zeros(n, dtype=np.int64), end=canvas.lengths, cache_length=None,
                        score_pos=score_pos, score_width=score_width)
