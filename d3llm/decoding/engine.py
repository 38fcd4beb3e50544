"""The decoding engine: one loop for every method, owning the batch, the KV cache and the forward passes.

Each iteration::

    plan = method.plan(...)          # per row: finished?  forward slice [start, end)?  cache length after?
    retire finished rows             # they stop changing and stop costing compute
    logits = one model forward       # over the union of the rows' slices, each row writing its own cache slots
    commit = method.commit(...)      # which masked positions get which tokens
    apply commit, record commit steps, count NFE, call the callback
    method.update(...)               # bookkeeping (one device->host transfer)

Rows leave the batch as soon as they finish: their canvas is copied out and the canvas, the cache and the method
state are compacted to the remaining rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from d3llm.cache.kv_cache import KVCache
from d3llm.decoding.canvas import Canvas
from d3llm.decoding.methods.base import Commit, DecodingMethod, StepPlan
from d3llm.decoding.result import StepEvent

MAX_STEPS = 10000  # safety cap, as in the reference


class DecodingEngine:
    def __init__(self, model, method: DecodingMethod, canvas: Canvas, *,
                 callback: Callable[[StepEvent], None] | None = None, max_steps: int = MAX_STEPS) -> None:
        self.model = model
        self.method = method
        self.canvas = canvas
        self.callback = callback
        self.max_steps = max_steps
        self.model_time = 0.0
        self._sync = canvas.device.type == "cuda"

    def run(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode until every row finishes. Returns (final canvases ``[B, L]``, NFE ``[B]``, commit steps
        ``[B, N]``)."""
        canvas, method = self.canvas, self.method
        batch, n_gen, g = canvas.size, canvas.gen_length, canvas.gen_start
        out = canvas.x.clone()
        nfe = np.zeros(batch, dtype=np.int64)
        steps_all = torch.full((batch, n_gen), -1, dtype=torch.long, device=canvas.device)
        steps = steps_all.clone()  # rows still decoding
        state = method.init_state(canvas)
        cache = self.model.new_cache(batch, canvas.length) if method.uses_cache else None

        for step in range(self.max_steps):
            plan = method.plan(canvas, state, step)
            if plan.canvas_edited:
                self._record(canvas, steps, step)
            if not plan.run.all():
                gone = np.flatnonzero(~plan.run)
                self._retire(canvas, steps, gone, out, steps_all)
                keep = np.flatnonzero(plan.run)
                if keep.size == 0:
                    break
                canvas, steps, plan = canvas.select(keep), steps[torch.as_tensor(keep, device=steps.device)], plan.select(keep)
                state = state.select(keep)
                if cache is not None:
                    cache = cache.select_rows(keep)
            logits, offset = self._forward(canvas, cache, plan)
            commit = method.commit(canvas, state, logits, offset, plan)
            self._apply(canvas, commit)
            self._record(canvas, steps, step)
            nfe[canvas.rows] += 1
            if self.callback is not None:
                self.callback(self._event(canvas, commit, step))
            method.update(canvas, state, commit)
        else:  # the step cap: keep whatever is decoded
            self._retire(canvas, steps, np.arange(canvas.size), out, steps_all)
        return out, torch.from_numpy(nfe), steps_all

    # -- pieces --------------------------------------------------------------------------------------------------------
    def _forward(self, canvas: Canvas, cache: KVCache | None, plan: StepPlan) -> tuple[torch.Tensor, int]:
        t0 = time.perf_counter()
        if cache is None:
            logits = self.model(canvas.x, attention_mask=canvas.attention_mask).logits
            offset = 0
        else:
            s, e = int(plan.start.min()), int(plan.end.max())
            uniform = bool((plan.start == s).all() and (plan.end == e).all())
            write_range = None if uniform else (torch.from_numpy(plan.start), torch.from_numpy(plan.end))
            logits = self.model(canvas.x[:, s:e], attention_mask=canvas.attention_mask, cache=cache, start=s,
                                append=0, write_range=write_range).logits
            cache.set_lengths(torch.from_numpy(plan.cache_length))
            offset = s
        if self._sync:
            torch.cuda.synchronize(canvas.device)
        self.model_time += time.perf_counter() - t0
        return logits, offset

    @staticmethod
    def _apply(canvas: Canvas, commit: Commit) -> None:
        w0, w1 = commit.start, commit.start + commit.transfer.shape[1]
        window = canvas.x[:, w0:w1]
        canvas.x[:, w0:w1] = torch.where(commit.transfer, commit.tokens, window)

    @staticmethod
    def _record(canvas: Canvas, steps: torch.Tensor, step: int) -> None:
        """Positions of the generation region that stopped being masked get this step's index."""
        newly = (canvas.x[:, canvas.gen_start:] != canvas.mask_id) & (steps < 0)
        steps.masked_fill_(newly, step)

    @staticmethod
    def _retire(canvas: Canvas, steps: torch.Tensor, gone: np.ndarray, out: torch.Tensor,
                steps_all: torch.Tensor) -> None:
        rows = torch.as_tensor(canvas.rows[gone], dtype=torch.long, device=out.device)
        local = torch.as_tensor(gone, dtype=torch.long, device=out.device)
        out[rows] = canvas.x.index_select(0, local)
        steps_all[rows] = steps.index_select(0, local)

    @staticmethod
    def _event(canvas: Canvas, commit: Commit, step: int) -> StepEvent:
        committed = torch.zeros_like(canvas.x, dtype=torch.bool)
        committed[:, commit.start : commit.start + commit.transfer.shape[1]] = commit.transfer
        return StepEvent(step=step, rows=canvas.rows.tolist(), canvas=canvas.x, committed=committed,
                         gen_start=canvas.gen_start)
