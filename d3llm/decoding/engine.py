"""The decoding engine: one loop for every method, owning the batch, the KV cache and the forward passes.

Each iteration::

    plan = method.plan(...)          # per row: finished?  forward slice [start, end)?  cache length after?
    retire finished rows             # they stop changing and stop costing compute
    logits = one model forward       # over the union of the rows' slices, each row writing its own cache slots
    commit = method.commit(...)      # which masked positions get which tokens
    apply commit, record commit steps, count NFE, call the callback
    method.update(...)               # bookkeeping

The canvas lives on the host; the device sees the slice each forward needs and returns logits, of which the method
scores only the positions it may commit. Rows leave the batch as soon as they finish: their canvas is copied out
and the canvas, the cache and the method state are compacted to the remaining rows.
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

    def run(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode until every row finishes. Returns host arrays: final canvases ``[B, L]``, NFE ``[B]`` and commit
        steps ``[B, N]``."""
        canvas, method = self.canvas, self.method
        batch, g = canvas.size, canvas.gen_start
        out = canvas.x.copy()
        nfe = np.zeros(batch, dtype=np.int64)
        steps_all = np.full((batch, canvas.gen_length), -1, dtype=np.int64)
        steps = steps_all.copy()  # rows still decoding
        state = method.init_state(canvas)
        cache = self.model.new_cache(batch, canvas.length) if method.uses_cache else None

        for step in range(self.max_steps):
            plan = method.plan(canvas, state, step)
            if not plan.run.all():
                gone = np.flatnonzero(~plan.run)
                finished = steps[gone]
                self._record(canvas.x[gone, g:], finished, step)  # e.g. early-stop fills
                out[canvas.rows[gone]] = canvas.x[gone]
                steps_all[canvas.rows[gone]] = finished
                keep = np.flatnonzero(plan.run)
                if keep.size == 0:
                    break
                canvas, steps, plan, state = canvas.select(keep), steps[keep], plan.select(keep), state.select(keep)
                if cache is not None:
                    cache = cache.select_rows(keep)
            logits, offset = self._forward(canvas, cache, plan)
            commit = method.commit(canvas, state, logits, offset, plan)
            commit.apply(canvas.x)
            self._record(canvas.x[:, g:], steps, step)
            nfe[canvas.rows] += 1
            if self.callback is not None:
                self.callback(self._event(canvas, commit, step))
            method.update(canvas, state, commit)
        else:  # the step cap: keep whatever is decoded
            out[canvas.rows] = canvas.x
            steps_all[canvas.rows] = steps
        return out, nfe, steps_all

    def _forward(self, canvas: Canvas, cache: KVCache | None, plan: StepPlan) -> tuple[torch.Tensor, int]:
        t0 = time.perf_counter()
        if cache is None:
            logits = self.model(canvas.tokens(), attention_mask=canvas.attention_mask).logits
            offset = 0
        else:
            s, e = int(plan.start.min()), int(plan.end.max())
            uniform = bool((plan.start == s).all() and (plan.end == e).all())
            write_range = None if uniform else (plan.start, plan.end)
            logits = self.model(canvas.tokens(s, e), attention_mask=canvas.attention_mask, cache=cache, start=s,
                                append=0, write_range=write_range).logits
            cache.lengths = plan.cache_length  # planned by the method, within [0, canvas length]
            offset = s
        if self._sync:
            torch.cuda.synchronize(canvas.device)
        self.model_time += time.perf_counter() - t0
        return logits, offset

    def _record(self, gen: np.ndarray, steps: np.ndarray, step: int) -> None:
        """Positions of the generation region that stopped being masked get this step's index (in place)."""
        steps[(gen != self.canvas.mask_id) & (steps < 0)] = step

    def _event(self, canvas: Canvas, commit: Commit, step: int) -> StepEvent:
        committed = np.zeros(canvas.x.shape, dtype=bool)
        np.put_along_axis(committed, commit.columns(), commit.transfer, axis=1)
        return StepEvent(step=step, rows=canvas.rows.tolist(), canvas=canvas.x, committed=committed,
                         gen_start=canvas.gen_start, block_size=getattr(self.method.params, "block_size", None))
