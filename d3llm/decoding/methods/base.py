"""The interface between the decoding engine and a decoding method.

The engine (:mod:`d3llm.decoding.engine`) owns the loop, the batch, the KV cache, forward passes, NFE accounting,
timing and callbacks. A method only supplies the step rules, in three calls per iteration:

1. :meth:`DecodingMethod.plan` -- which rows still decode and, per row, which canvas slice to forward and how long
   the cache is afterwards (a method may also edit the canvas here, e.g. early stop);
2. :meth:`DecodingMethod.commit` -- given the logits, which masked positions to fill with which tokens;
3. :meth:`DecodingMethod.update` -- bookkeeping once the commit is applied.

Work is split by size: the device runs the model and scores the positions a step may commit (entropies,
confidences, tokens over the vocabulary), one transfer brings those ``[rows, positions]`` scores to the host, and
everything else -- the canvas, block states, commit rules -- is small vectorised numpy on the host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from d3llm.decoding.canvas import Canvas


@dataclass
class StepPlan:
    """What each active row does in this iteration (arrays over the active rows).

    Attributes:
        run: ``[n]`` bool; False = the row is finished (it is retired before the forward).
        start, end: ``[n]`` the canvas slice ``[start, end)`` the row needs logits for. Without a cache every row
            forwards the whole canvas (start 0, end L).
        cache_length: ``[n]`` the row's valid cached prefix after the forward (cache methods only).
    """

    run: np.ndarray
    start: np.ndarray
    end: np.ndarray
    cache_length: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> "StepPlan":
        return StepPlan(self.run[keep], self.start[keep], self.end[keep],
                        None if self.cache_length is None else self.cache_length[keep])


@dataclass
class Commit:
    """What a step commits (host arrays): where ``transfer`` (``[n, K]`` bool) is set, the position gets ``tokens``.

    Positions are either the window ``[start, start + K)`` of every row (``start`` set) or per-row canvas columns
    ``positions`` ``[n, K]`` (a row's padding entries repeat one column, with ``transfer`` False there).
    """

    transfer: np.ndarray
    tokens: np.ndarray
    start: int | None = None
    positions: np.ndarray | None = None

    def columns(self) -> np.ndarray:
        """``[n, K]`` the canvas column of every entry."""
        if self.positions is not None:
            return self.positions
        n, k = self.transfer.shape
        return np.broadcast_to(np.arange(self.start, self.start + k), (n, k))

    def apply(self, x: np.ndarray) -> None:
        """Write the committed tokens into the canvas ``x`` ``[n, L]`` (in place)."""
        if self.positions is None:
            window = x[:, self.start : self.start + self.transfer.shape[1]]
            np.copyto(window, self.tokens, where=self.transfer)
        else:
            rows, cols = np.nonzero(self.transfer)
            x[rows, self.positions[rows, cols]] = self.tokens[rows, cols]

    def per_block(self, gen_start: int, block_size: int, blocks: int) -> np.ndarray:
        """``[n, blocks]`` committed positions in each generation block (prompt positions belong to none)."""
        cols = self.columns()
        hit = self.transfer & (cols >= gen_start)
        n = self.transfer.shape[0]
        flat = (np.arange(n)[:, None] * blocks + (cols - gen_start) // block_size)[hit]
        return np.bincount(flat, minlength=n * blocks).reshape(n, blocks)


class MethodState:
    """Per-row method state; ``row_fields`` name the arrays whose first axis is the row."""

    row_fields: ClassVar[tuple[str, ...]] = ()

    def select(self, keep: np.ndarray) -> "MethodState":
        clone = dataclasses.replace(self) if dataclasses.is_dataclass(self) else self
        for name in self.row_fields:
            value = getattr(self, name)
            if value is not None:
                setattr(clone, name, value[keep])
        return clone


class DecodingMethod:
    """Step rules of one decoding method (see the module docstring).

    ``causal``: the method decodes causal (autoregressive) models; diffusion methods (False) need a bidirectional
    one. ``d3llm.generate`` refuses a model of the other kind.
    """

    name: ClassVar[str]
    Params: ClassVar[type[Params]]
    causal: ClassVar[bool] = False

    def __init__(self, params: Params, *, family: str, mask_id: int, eos_id: int | None,
                 generator: torch.Generator | None) -> None:
        self.params = params
        self.family = family
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.generator = generator

    @property
    def uses_cache(self) -> bool:
        return False

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_new_tokens

    def init_state(self, canvas: Canvas) -> MethodState:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan(self, canvas: Canvas, state: MethodState, step: int) -> StepPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self, canvas: Canvas, state: MethodState, logits: torch.Tensor, offset: int,
               plan: StepPlan) -> Commit:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, canvas: Canvas, state: MethodState, commit: Commit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------------------------
    @staticmethod
    def full_plan(canvas: Canvas, run: np.ndarray) -> StepPlan:
        n = canvas.size
        return StepPlan(run=run, start=np.zeros(n, dtype=np.int64), end=np.full(n, canvas.length, dtype=np.int64))

    @staticmethod
    def window_candidates(canvas: Canvas, lo: np.ndarray, hi: np.ndarray, masked: np.ndarray | None = None
                          ) -> tuple[int, int, np.ndarray]:
        """The window ``[w0, w1)`` spanning every row's candidate range ``[lo, hi)`` and the ``[n, W]`` candidate
        mask: masked positions (per ``masked`` ``[n, L]`` when given, else the canvas) inside the row's range."""
        w0, w1 = int(lo.min()), int(hi.max())
        cand = masked[:, w0:w1].copy() if masked is not None else canvas.x[:, w0:w1] == canvas.mask_id
        if (lo != w0).any() or (hi != w1).any():
            cols = np.arange(w0, w1)
            cand &= (cols >= lo[:, None]) & (cols < hi[:, None])
        return w0, w1, cand
