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
        batch, n_gen = canvas.size, canvas.gen_length
        out = canvas.x.clone()
        nfe = np.zeros(batch, dtype=np.int64)
        steps_all = np.full((batch, n_gen), -1, dtype=np.int64)
        steps = steps_all.copy()  # rows still decoding
        state = method.init_state(canvas)
        cache = self.model.new_cache(batch, canvas.length) if method.uses_cache else None

        for step in range(self.max_steps):
            plan = method.plan(canvas, state, step)
            if not plan.run.all():
                gone = np.flatnonzero(~plan.run)
                gen = self._to_host(canvas.x[:, canvas.gen_start:])
                self._record(steps, gen[gone], step, rows=gone)  # e.g. early-stop fills
                self._retire(canvas, steps, gone, out, steps_all)
                keep = np.flatnonzero(plan.run)
                if keep.size == 0:
                    break
                canvas, steps, plan = canvas.select(keep), steps[keep], plan.select(keep)
                state = state.select(keep)
                if cache is not None:
                    cache = cache.select_rows(keep)
            logits, offset = self._forward(canvas, cache, plan)
            commit = method.commit(canvas, state, logits, offset, plan)
            self._apply(canvas, commit)
            host = self._to_host(canvas.x)  # the iteration's one device -> host transfer
            self._record(steps, host[:, canvas.gen_start:], step)
            nfe[canvas.rows] += 1
            if self.callback is not None:
                self.callback(self._event(canvas, commit, step))
            method.update(canvas, state, commit, host)
        else:  # the step cap: keep whatever is decoded
            self._retire(canvas, steps, np.arange(canvas.size), out, steps_all)
        return out, torch.from_numpy(nfe), torch.from_numpy(steps_all)

    # -- pieces --------------------------------------------------------------------------------------------------------
    def _forward(self, canvas: Canvas, cache: KVCache | None, plan: StepPlan) -> tuple[torch.Tensor, int]:
        t0 = time.perf_counter()
        if cache is None:
            logits = self.model(canvas.x, attention_mask=canvas.attention_mask).logits
            offset = 0
        else:
            s, e = int(plan.start.min()), int(plan.end.max())
            uniform = bool((plan.start == s).all() and (plan.end == e).all())
            write_range = None if uniform else (plan.start, plan.end)
            logits = self.model(canvas.x[:, s:e], attention_mask=canvas.attention_mask, cache=cache, start=s,
                                append=0, write_range=write_range).logits
            cache.set_lengths(plan.cache_length)
            offset = s
        if self._sync:
            torch.cuda.synchronize(canvas.device)
        self.model_time += time.perf_counter() - t0
        return logits, offset

    @staticmethod
    def _apply(canvas: Canvas, commit: Commit) -> None:
        if commit.positions is None:
            w0, w1 = commit.start, commit.start + commit.transfer.shape[1]
            canvas.x[:, w0:w1] = torch.where(commit.transfer, commit.tokens, canvas.x[:, w0:w1])
        else:
            old = canvas.x.gather(1, commit.positions)
            canvas.x.scatter_(1, commit.positions, torch.where(commit.transfer, commit.tokens, old))

    @staticmethod
    def _to_host(t: torch.Tensor) -> np.ndarray:
        """A host copy (never a view: the canvas keeps changing in place)."""
        return t.numpy().copy() if t.device.type == "cpu" else t.cpu().numpy()

    def _record(self, steps: np.ndarray, gen: np.ndarray, step: int, rows: np.ndarray | None = None) -> None:
        """Positions of the generation region that stopped being masked get this step's index."""
        view = steps if rows is None else steps[rows]
        view[(gen != self.canvas.mask_id) & (view < 0)] = step
        if rows is not None:
            steps[rows] = view

    @staticmethod
    def _retire(canvas: Canvas, steps: np.ndarray, gone: np.ndarray, out: torch.Tensor,
                steps_all: np.ndarray) -> None:
        rows = torch.as_tensor(canvas.rows[gone], dtype=torch.long, device=out.device)
        out[rows] = canvas.x.index_select(0, torch.as_tensor(gone, dtype=torch.long, device=out.device))
        steps_all[canvas.rows[gone]] = steps[gone]

    def _event(self, canvas: Canvas, commit: Commit, step: int) -> StepEvent:
        committed = torch.zeros_like(canvas.x, dtype=torch.bool).scatter_(1, commit.columns(), commit.transfer)
        return StepEvent(step=step, rows=canvas.rows.tolist(), canvas=canvas.x, committed=committed,
                         gen_start=canvas.gen_start, block_size=getattr(self.method.params, "block_size", None))
