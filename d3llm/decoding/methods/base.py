"""The interface between the decoding engine and a decoding method.

The engine (:mod:`d3llm.decoding.engine`) owns the loop, the batch, the KV cache, forward passes, NFE accounting,
timing and callbacks. A method only supplies the step rules, in three calls per iteration:

1. :meth:`DecodingMethod.plan` -- which rows still decode and, per row, which canvas slice to forward and how long
   the cache is afterwards (a method may also edit the canvas here, e.g. early stop);
2. :meth:`DecodingMethod.commit` -- given the logits, which masked positions to fill with which tokens;
3. :meth:`DecodingMethod.update` -- bookkeeping once the commit is applied, given the canvas copied to the host
   (the engine's one device-to-host transfer per iteration).

Per-row method state lives in numpy arrays on the host (block counters are a handful of integers per row; numpy
keeps them cheap) and token work stays on the device.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from d3llm.decoding.canvas import Canvas
from d3llm.errors import GenerationError


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
    """What a step commits: where ``transfer`` (``[n, K]`` bool) is set, the position gets ``tokens`` (``[n, K]``).

    Positions are either the window ``[start, start + K)`` of every row (``start`` set) or per-row canvas columns
    ``positions`` ``[n, K]`` (a row's padding entries repeat one column, with ``transfer`` False there).
    """

    transfer: torch.Tensor
    tokens: torch.Tensor
    start: int | None = None
    positions: torch.Tensor | None = None

    def columns(self) -> torch.Tensor:
        """``[n, K]`` the canvas column of every entry."""
        if self.positions is not None:
            return self.positions
        n, k = self.transfer.shape
        return torch.arange(self.start, self.start + k, device=self.transfer.device).expand(n, k)


class MethodState:
    """Per-row method state; ``row_fields`` name the arrays whose first axis is the row."""

    row_fields: ClassVar[tuple[str, ...]] = ()

    def select(self, keep: np.ndarray) -> "MethodState":
        clone = dataclasses.replace(self) if dataclasses.is_dataclass(self) else self
        for name in self.row_fields:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.index_select(0, torch.as_tensor(keep, dtype=torch.long, device=value.device))
            else:
                value = value[keep]
            setattr(clone, name, value)
        return clone


@dataclass
class Params:
    """Base of the per-method parameter dataclasses (reference names and defaults)."""

    aliases: ClassVar[dict[str, str]] = {"gen_length": "max_new_tokens", "block_length": "block_size"}

    @classmethod
    def from_kwargs(cls, method: str, kwargs: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            target = cls.aliases.get(key, key)
            if target not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise GenerationError(
                    f"unknown parameter '{key}' for method '{method}'{hint}; valid parameters: {', '.join(names)}"
                )
            if target in values:
                raise GenerationError(f"parameter '{target}' given twice for method '{method}' (also as '{key}')")
            values[target] = value
        params = cls(**values)
        params.validate(method)
        return params

    def validate(self, method: str) -> None:  # pragma: no cover - every method overrides
        raise NotImplementedError

    # -- shared checks ---------------------------------------------------------------------------------------------
    @staticmethod
    def check_int(method: str, name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise GenerationError(f"{method}: {name} must be an integer >= {minimum}, got {value!r}")

    @staticmethod
    def check_range(method: str, name: str, value: Any, lo: float, hi: float | None, what: str,
                    allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or value != value:
            raise GenerationError(f"{method}: {name} must be a number, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise GenerationError(f"{method}: {name}={value} is outside {span} ({what})")

    @staticmethod
    def check_choice(method: str, name: str, value: Any, choices: tuple) -> None:
        if value not in choices:
            raise GenerationError(f"{method}: {name}={value!r} is not one of {', '.join(map(repr, choices))}")

    def check_blocks(self, method: str) -> None:
        """``max_new_tokens`` must be a positive multiple of ``block_size`` (whole blocks are decoded)."""
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_int(method, "block_size", self.block_size)
        if self.max_new_tokens % self.block_size:
            raise GenerationError(
                f"{method}: max_new_tokens={self.max_new_tokens} is not a multiple of block_size={self.block_size}; "
                f"{method} decodes whole blocks (use e.g. max_new_tokens="
                f"{-(-self.max_new_tokens // self.block_size) * self.block_size})"
            )


class DecodingMethod:
    """Step rules of one decoding method (see the module docstring)."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]

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

    def update(self, canvas: Canvas, state: MethodState, commit: Commit,
               host: np.ndarray) -> None:  # pragma: no cover - abstract
        """``host``: ``[n, L]`` the canvas after the commit, on the host."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------------------------
    @staticmethod
    def full_plan(canvas: Canvas, run: np.ndarray) -> StepPlan:
        n = canvas.size
        return StepPlan(run=run, start=np.zeros(n, dtype=np.int64), end=np.full(n, canvas.length, dtype=np.int64))

    @staticmethod
    def window_candidates(canvas: Canvas, lo: np.ndarray, hi: np.ndarray, snapshot: torch.Tensor | None = None
                          ) -> tuple[int, int, torch.Tensor]:
        """The window ``[w0, w1)`` spanning every row's candidate range ``[lo, hi)`` and the ``[n, W]`` candidate
        mask: positions that are masked (in ``snapshot``, a ``[n, L]`` bool mask, when given, else in the canvas)
        inside the row's range."""
        w0, w1 = int(lo.min()), int(hi.max())
        masked = snapshot[:, w0:w1] if snapshot is not None else canvas.x[:, w0:w1] == canvas.mask_id
        if (lo == w0).all() and (hi == w1).all():
            return w0, w1, masked
        pos = torch.arange(w0, w1, device=canvas.device)
        lo_t = torch.from_numpy(lo).to(canvas.device)[:, None]
        hi_t = torch.from_numpy(hi).to(canvas.device)[:, None]
        return w0, w1, masked & (pos >= lo_t) & (pos < hi_t)
