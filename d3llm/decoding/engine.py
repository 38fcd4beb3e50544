"""The decoding engine: the one decoding loop of the code base, owning the batch, the KV cache and the forwards.

It is step-wise, so that a server can drive it and rows can join and leave a running batch::

    engine = d3llm.Engine(model, "multi_block", threshold=0.5, block_size=32, cache_delay_iter=1)   # shared setting
    a = engine.add_request(ids_a, max_new_tokens=256, temperature=0.0)        # per-row parameters
    b = engine.add_request(ids_b, max_new_tokens=64, seed=7, temperature=0.7, request_id="req-b")
    while engine.has_work:
        for event in engine.step():          # one forward for every active row
            event.new_tokens                  # committed text since the last event (cut at the first EOS)
            if event.finished:
                event.finish_reason, event.output.tokens, event.output.nfe
    engine.cancel(a)                          # the row leaves at the next step

* ``Engine(model, method, **params)`` fixes the method and the parameters every row shares (``block_size``,
  ``cache``, ``cache_delay_iter``, ...); they are resolved and validated once, with the messages of
  :func:`d3llm.generate`.
* ``add_request(prompt, *, request_id=None, seed=None, eos_token_id=None, **params)`` queues a request. ``params``
  may set the method's per-row parameters (``Engine.per_row_params``: ``max_new_tokens``, ``temperature``, ``steps``,
  ``threshold`` where the method has them); they are resolved and validated like ``generate``'s, and a bad request
  (empty prompt, prompt too long, unknown or shared parameter, out-of-range value) raises
  :class:`~d3llm.errors.GenerationError` for that request alone: nothing is queued and no other row is touched.
  Returns the request id (by default 0, 1, 2, ... in the order of arrival).
* ``step()`` admits waiting requests (at most ``max_batch`` active rows), runs one decoding step for every active
  row and returns a :class:`RowEvent` per row that committed something or finished. Rows join at step boundaries,
  and a row leaves the batch the moment its method says it is finished or it is cancelled: it releases its cache
  row and costs no compute from the next step on (``engine.stats`` counts the positions each row forwards).
* ``cancel(request_id)``: the row (or waiting request) finishes at the next step with ``finish_reason ==
  "cancelled"``.

**Fault isolation** (``isolate_faults=True``, what a server wants): whatever one row raises while it joins, is
planned, forwarded or committed fails that request alone. The step is a transaction: before it, the engine keeps a
copy of the rows' host state (canvas, method state, bookkeeping, cache lengths, seeded generators' states; a few
kilobytes). If the step raises, that copy is restored and the step is replayed one row at a time (a row's logits
are bit-identical whatever the batch, and a replayed forward rewrites exactly the cache entries the failed one
wrote, from the same inputs), so the rows that do not raise get the tokens they would have had; a row that raises
alone finishes with ``finish_reason == "error"`` and the exception in ``RowEvent.error``. Joining works the same
way: a batch of joining requests whose set-up raises is retried one request at a time. Without isolation (the
default, what ``d3llm.generate`` uses) the exception propagates out of ``step()`` at once.

Streaming contract: ``RowEvent.new_tokens`` only ever holds *committed* tokens of the row's *committed prefix*
(generated positions ``[0, prefix_length)``, all of them unmasked). Decoders never change a committed position, and
a new end-of-text can only appear at a masked position, i.e. after the prefix, so no later step can change this
text; it is cut at the first end-of-text (positions after it may still be rewritten, e.g. by early stop).
``finish_reason`` is ``"stop"`` (an end-of-text was generated), ``"length"`` (the generation filled
``max_new_tokens``, or hit the step cap), ``"cancelled"`` or ``"error"`` (fault isolation only).

The engine is not thread-safe and never blocks: a server runs one task that owns it and calls ``step()`` in a loop
(in a worker thread if it must not block the event loop), and its handlers hand requests and cancellations to that
task, which calls ``add_request`` / ``cancel`` between steps (or everything holds one lock).

Each step::

    admit waiting rows: canvas rows, method state, cache rows     (rows are independent: see methods/base.py)
    plan = method.plan(...)      # per row: finished?  forward positions [start, end)?  cache length after?
                                 #          positions it needs logits for
    retire finished rows         # they stop changing and stop costing compute
    logits = forward(...)        # the rows' slices, each against its own cached prefix
    commit = method.commit(...)  # which masked positions get which tokens
    apply, record commit steps, count NFE, emit events
    method.update(...)

The canvas lives on the host; the device sees the slices each forward needs and returns logits only at the
positions the method scores.

**Packed forwards** (:mod:`d3llm.models.packed`). Rows drift apart: one forwards its prompt and whole canvas,
another one block against its cache, a third everything after its cached prefix. A step therefore forwards each
row's own slice only: the slices are concatenated into one token axis, the linear layers and the MLP run once over
all packed tokens, attention runs per row against that row's own cache row (consecutive rows of one shape share a
call, on views), and the LM head runs only at the scored positions. Nothing is padded except to the 4-row minimum
where CPU GEMMs round differently, so a row's logits are bit-identical whatever the batch. Measured against the
alternatives on the same recorded steps of a 32-request staggered run (``benchmarks/packed_forward.py``, shipped
teacher, 1 CPU thread, seconds of forward time): ``multi_block`` with cache delay 1: packed 1.43, one forward over
the union of the slices 2.32, padded per-row slices 2.30, one forward per row 1.62; ``fast_dllm`` dual cache:
2.44 / 9.84 / 9.22 / 3.69; prefix cache: 4.05 / 10.24 / 9.88 / 5.30. On a CPU a step's packed forward is split
into groups of consecutive rows of at most ``max_forward_tokens`` tokens (1024: per-token cost rises beyond).

What batching can gain is bounded by the hardware: ``benchmarks/decode.py`` measures, per setting, the slice a row
forwards per step at batch 1 and how much faster per token a plain ``[b, slice]`` forward is than ``[1, slice]``.
On one CPU thread a slice of ~130 tokens (cached ``multi_block``: the active blocks plus the masked rest of the
canvas, which bidirectional attention needs) already runs near the matmuls' best per-token speed, so batching
gains at most ~1.2x there; short slices (``fast_dllm`` dual cache: one block) gain more. A GPU, idle at batch 1,
is where it pays.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np
import torch

from d3llm.decoding import rules
from d3llm.decoding.canvas import Canvas, build_canvas, check_prompt
from d3llm.decoding.defaults import resolve_decoder, resolve_eos, resolve_method
from d3llm.decoding.early_exit import ExitRule
from d3llm.decoding.methods import method_class
from d3llm.decoding.methods.base import Commit, RowSetup, StepPlan
from d3llm.decoding.params import Params, check_seed
from d3llm.decoding.rows import RowTable
from d3llm.errors import GenerationError
from d3llm.models.packed import PackedRows

MAX_STEPS = 10000  # safety cap per row, as in the reference
CPU_FORWARD_TOKENS = 1024  # tokens per packed forward on a CPU (larger forwards run slower per token: measured)


def too_long_message(label, length: int, params: Params, limit: int, others: int = 0) -> str:
    """The error for prompt ``label`` of ``length`` tokens that leaves no room for ``params.max_new_tokens``."""
    room = limit - params.max_new_tokens
    more = f" (and {others} more prompt(s))" if others else ""
    return (f"prompt {label} has {length} tokens; with {params.show('max_new_tokens')} that is "
            f"{length + params.max_new_tokens}, more than the model's maximum length {limit}{more}; shorten the "
            f"prompt to at most {max(room, 0)} tokens or lower max_new_tokens")


@dataclass
class RequestOutput:
    """The outcome of a finished request.

    Attributes:
        request_id: as given to (or returned by) ``add_request``.
        prompt: the prompt ids.
        generated: ``[N]`` the final generation region (EOS padding included; masks only if cut off).
        commit_step: ``[N]`` the row's step (0-based forward index) after which each position stopped being
            masked; -1 for a position still masked.
        tokens: the generated ids before the first end-of-text.
        nfe: forward passes the row took part in.
        positions: positions the row forwarded, over all its forwards (a full forward counts the whole row, a
            cached one its slice): what its tokens cost in model compute.
        finish_reason: ``"stop"``, ``"length"``, ``"cancelled"`` or ``"error"``.
    """

    request_id: Hashable
    prompt: list[int]
    generated: np.ndarray
    commit_step: np.ndarray
    tokens: list[int]
    nfe: int
    finish_reason: str
    positions: int = 0


@dataclass
class RowEvent:
    """What one step did to one row (see the module docstring for the streaming contract).

    Attributes:
        request_id: the request.
        step: the row's step index (its forwards before this one); None when the row left without a forward.
        prefix_length: generated positions ``[0, prefix_length)`` are committed and final.
        new_tokens: tokens of the committed prefix not reported before, cut at the first end-of-text.
        finished, finish_reason, output: set when the row left the batch in this step.
        error: what the row raised (``finish_reason == "error"``, fault isolation only).
    """

    request_id: Hashable
    step: int | None
    prefix_length: int
    new_tokens: list[int]
    finished: bool = False
    finish_reason: str | None = None
    output: RequestOutput | None = None
    error: BaseException | None = None
    _commit: tuple | None = field(default=None, repr=False)

    @property
    def committed(self) -> np.ndarray:
        """Generated positions (0-based) committed in this step, in increasing order."""
        if self._commit is None:
            return np.zeros(0, dtype=np.int64)
        transfer, positions, gen_start = self._commit
        return np.sort(positions[transfer]) - gen_start


@dataclass
class EngineStats:
    """Counters of the work done (what tests and the server's metrics read).

    Attributes:
        steps: steps that ran a forward; forwards: row forwards (the sum of every row's NFE).
        positions: positions forwarded, summed over rows and steps.
        last_positions: request id -> positions that row forwarded in the last step (empty: no forward).
        model_time: seconds inside model forwards.
        replays: steps that raised and were replayed one row at a time (fault isolation).
    """

    steps: int = 0
    forwards: int = 0
    positions: int = 0
    last_positions: dict = field(default_factory=dict)
    model_time: float = 0.0
    replays: int = 0


@dataclass
class _Request:
    request_id: Hashable
    prompt: np.ndarray
    params: Params
    eos_id: int | None
    generator: torch.Generator | None


@dataclass
class _Rows(RowTable):
    """The engine's own per-row bookkeeping."""

    row_fields = {"requests": None, "slots": 0, "nfe": 0, "positions": 0, "commit_step": -1, "prefix": 0,
                  "stopped": False, "cancelled": False}
    requests: list  # [n] _Request
    slots: np.ndarray  # [n] the row of the engine's KV cache each request holds
    nfe: np.ndarray  # [n]
    positions: np.ndarray  # [n] positions forwarded
    commit_step: np.ndarray  # [n, max N]
    prefix: np.ndarray  # [n] committed prefix already reported
    stopped: np.ndarray  # [n] an end-of-text was reported: nothing more to stream
    cancelled: np.ndarray  # [n]


class Engine:
    """Step-wise decoding of requests that join and leave a running batch (see the module docstring)."""

    def __init__(self, model, method: str | None = None, *, mask_id: int | None = None,
                 eos_token_id: int | None = None, max_batch: int | None = None, max_steps: int = MAX_STEPS,
                 max_forward_tokens: int | None | str = "auto", isolate_faults: bool = False,
                 **params: Any) -> None:
        self.model = model
        self._settings = dict(method=method, mask_id=mask_id, eos_token_id=eos_token_id, max_batch=max_batch,
                              max_steps=max_steps, max_forward_tokens=max_forward_tokens,
                              isolate_faults=isolate_faults, **params)
        self.isolate_faults = bool(isolate_faults)
        self.method_name = resolve_method(model, method)
        self.method_class = method_class(self.method_name, model.family)
        self.shared_params = self._canonical(params)
        self.params = self._resolve(self.shared_params)
        config = model.config
        mask_id = config.mask_token_id if mask_id is None else mask_id
        if mask_id is None:
            raise GenerationError("the model config has no mask_token_id; pass mask_id=...")
        self.vocab_size = config.padded_vocab_size
        self._check_token_id("mask_id", mask_id)
        self.mask_id = mask_id
        self.eos_id = self._row_eos(eos_token_id)
        self.method = self.method_class(self.params, family=model.family, mask_id=mask_id,
                                        vocab_size=self.vocab_size)
        self.method.check_row(self.params)
        if self.params.early_exit is not None and self.method_class.causal:
            raise GenerationError(f"{self.method_name}: early_exit fills a diffusion canvas; an autoregressive "
                                  "decoder has none (leave early_exit out)")
        self.early_exit = ExitRule.from_params(self.params, model.family)
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise GenerationError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.max_batch = max_batch
        if max_forward_tokens == "auto":
            max_forward_tokens = CPU_FORWARD_TOKENS if model.device.type == "cpu" else None
        if max_forward_tokens is not None and (isinstance(max_forward_tokens, bool) or
                                               not isinstance(max_forward_tokens, int) or max_forward_tokens < 1):
            raise GenerationError(f"max_forward_tokens must be a positive integer or None, got {max_forward_tokens!r}")
        self.max_forward_tokens = max_forward_tokens
        self.max_steps = max_steps
        self.device = model.device
        self.stats = EngineStats()
        self._sync = self.device.type == "cuda"
        self._waiting: deque[_Request] = deque()
        self._ids = itertools.count()
        self._known: set = set()
        self._cancel: set = set()
        self.canvas: Canvas | None = None
        self.state = None
        self.rows: _Rows | None = None
        self.last_commit: Commit | None = None
        self.cache = None  # one KV cache; its rows go to requests as they join and come back when they leave
        self._free: list[int] = []

    def fresh(self) -> "Engine":
        """A new, empty engine on the same model with the same settings (what a server restarts with)."""
        return Engine(self.model, **{**self._settings, "isolate_faults": self.isolate_faults})

    # -- parameters ----------------------------------------------------------------------------------------------
    @property
    def per_row_params(self) -> tuple[str, ...]:
        """Parameters a request may set for its own row (besides ``seed`` and ``eos_token_id``)."""
        return self.method_class.Params.per_row

    def _canonical(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameter names with the aliases (``gen_length``, ``block_length``) replaced, so that shared and per-row
        values merge (a name given twice is passed on as it is, for the resolution to report)."""
        aliases = self.method_class.Params.aliases
        targets = [aliases.get(k, k) for k in params]
        if len(set(targets)) < len(targets):
            return dict(params)
        return dict(zip(targets, params.values()))

    def _resolve(self, params: dict[str, Any]) -> Params:
        """The one place where a row's decoder parameters are resolved (the caller's values, then the model
        folder's defaults, then the method's) and validated."""
        return resolve_decoder(self.model, self.method_name, params)[2]

    def _check_token_id(self, name: str, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or not 0 <= value < self.vocab_size):
            raise GenerationError(f"{name}={value!r} is not a token id of this model's vocabulary "
                                  f"[0, {self.vocab_size})")

    def _row_eos(self, eos_token_id: Any) -> int | None:
        self._check_token_id("eos_token_id", eos_token_id)
        eos = resolve_eos(self.model, None if eos_token_id is None else int(eos_token_id))
        if eos == self.mask_id:
            raise GenerationError(f"eos_token_id and mask_id are both {self.mask_id}; they must differ")
        return eos

    # -- requests ------------------------------------------------------------------------------------------------
    def add_request(self, prompt, *, request_id: Hashable | None = None, seed: int | None = None,
                    eos_token_id: int | None = None, **params: Any) -> Hashable:
        """Queue a request (see the module docstring); returns its id. Raises :class:`GenerationError` for a bad
        request, leaving the engine as it was."""
        label = request_id
        while label is None or (request_id is None and label in self._known):
            label = next(self._ids)  # automatic ids skip ids the caller is using
        if label in self._known:
            raise GenerationError(f"request id {label!r} is already in use")
        own = self._canonical(params)
        fields = {f for f in self.method_class.Params.__dataclass_fields__}
        for key in own:
            if key in fields and key not in self.per_row_params:
                raise GenerationError(
                    f"{self.method_name}: parameter '{key}' is shared by every row and cannot be set per request "
                    f"(set it when the engine is created); per-request parameters: "
                    f"{', '.join((*self.per_row_params, 'seed', 'eos_token_id'))}")
        resolved = self._resolve({**self.shared_params, **own}) if own else self.params
        self.method.check_row(resolved)
        eos = self.eos_id if eos_token_id is None else self._row_eos(eos_token_id)
        check_seed(seed)
        ids = check_prompt(prompt, label, self.vocab_size)
        if len(ids) + resolved.max_new_tokens > self.model.config.max_length:
            raise GenerationError(too_long_message(label, len(ids), resolved, self.model.config.max_length))
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed))
        self._known.add(label)
        self._waiting.append(_Request(label, ids, resolved, eos, generator))
        return label

    def cancel(self, request_id: Hashable) -> bool:
        """Cancel a waiting or running request (it finishes at the next step). False if it is unknown or done."""
        if request_id not in self._known:
            return False
        self._cancel.add(request_id)
        return True

    @property
    def num_active(self) -> int:
        return 0 if self.canvas is None else self.canvas.size

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting) or self.num_active > 0

    @property
    def active_ids(self) -> list:
        return [] if self.rows is None else [r.request_id for r in self.rows.requests]

    # -- the loop ------------------------------------------------------------------------------------------------
    def step(self) -> list[RowEvent]:
        """One decoding step for every active row (after admitting waiting requests). Returns the events."""
        if torch.is_inference_mode_enabled():
            return self._step()
        with torch.inference_mode():
            return self._step()

    def _step(self) -> list[RowEvent]:
        events: list[RowEvent] = []
        self.stats.last_positions = {}
        self._admit(events)
        if self.canvas is None:
            return events
        if self._cancel or self.rows.nfe[0] >= self.max_steps:  # the first row is the oldest
            cut = self.rows.cancelled | (self.rows.nfe >= self.max_steps)
            if cut.any():
                self._retire(np.flatnonzero(cut), events, reason=None)
                if self.canvas is None:
                    return events
        if not self.isolate_faults:
            self._decode(events)
            return events
        before = self._snapshot()
        done: list[RowEvent] = []
        try:
            self._decode(done)
        except Exception:
            self._restore(before)
            done = self._replay_rows_alone(before)
        events += done
        return events

    def _decode(self, events: list[RowEvent]) -> None:
        """The iteration of the active rows: plan, retire finished rows, forward, commit, update."""
        plan = self.method.plan(self.canvas, self.state)
        if not plan.run.all():
            self._retire(np.flatnonzero(~plan.run), events, reason="done")
            if self.canvas is None:
                return events
            plan = plan.select(np.flatnonzero(plan.run))
        canvas, state, rows = self.canvas, self.state, self.rows
        watch = None
        if self.early_exit is not None:  # also score every generation position the step forwards
            watch = self.early_exit.positions(canvas, plan)
            k = plan.score_pos.shape[1]
            plan.score_pos = np.concatenate([plan.score_pos, watch[0]], axis=1)
            masked_before = canvas.gen() == self.mask_id
        logits = self._forward(plan)
        if watch is not None:
            logits, exit_logits = logits[:, :k], logits[:, k:]
            plan.score_pos = plan.score_pos[:, :k]
        commit = self.method.commit(canvas, state, logits, plan)
        commit.apply(canvas.x)
        gen = canvas.gen()
        masked = gen == self.mask_id
        self._record(masked)
        steps = rows.nfe.tolist()
        exiting = None
        if watch is not None:
            fire, exit_tokens = self.early_exit.fires(canvas, plan, exit_logits, *watch, masked_before)
            if fire.any():
                exiting = np.flatnonzero(fire)
                self._exit_fill(exiting, watch, exit_tokens)
                gen = canvas.gen()
                masked = gen == self.mask_id
        rows.nfe += 1
        self.last_commit = commit
        self._progress(events, steps, commit, gen, masked)
        self.method.update(canvas, state, commit)
        if exiting is not None:  # early exit: these rows are complete
            self._retire(exiting, events, reason="done")

    def _exit_fill(self, rows: np.ndarray, watch: tuple[np.ndarray, np.ndarray], tokens: np.ndarray) -> None:
        """Early exit of ``rows``: every mask left in their generation gets the argmax token at it, from this step's
        logits where the step forwarded it, else from one extra uncached forward of the row's whole sequence
        (counted in its NFE and forwarded positions; the KV cache is not touched)."""
        canvas = self.canvas
        positions, fresh = watch
        in_gen = np.arange(positions.shape[1])[None, :] < canvas.gen_lengths[rows, None]
        r, c = np.nonzero((canvas.x[rows[:, None], positions[rows]] == self.mask_id) & in_gen)
        if r.size == 0:
            return
        stale = np.zeros(len(rows), dtype=bool)
        stale[r[~fresh[rows[r], c]]] = True
        # the fill is committed at the index of the forward its logits come from
        self.rows.commit_step[rows[r], c] = self.rows.nfe[rows[r]] + stale[r]
        if stale.any():
            tokens = tokens.copy()
            again = rows[stale]
            tokens[again] = self._full_forward_argmax(again, positions[again])
        canvas.x[rows[r], positions[rows[r], c]] = tokens[rows[r], c]

    def _full_forward_argmax(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``[len(rows), G]`` argmax tokens (mask excluded) at ``positions`` from one uncached forward of each of
        ``rows``' whole sequence; counted as a forward of those rows."""
        t0 = time.perf_counter()
        lengths = self.canvas.lengths[rows]
        packed = PackedRows.from_slices(np.zeros(len(rows), dtype=np.int64), lengths, None, self.rows.slots[rows])
        tokens = self.canvas.x[np.repeat(rows, packed.lengths), packed.positions]
        at = np.minimum(positions, packed.lengths[:, None] - 1) + packed.offsets[:, None]
        logits = self.model.forward_packed(torch.from_numpy(tokens).to(self.device), packed,
                                           torch.from_numpy(at.reshape(-1)).to(self.device), cache=None)
        out = rules.to_host(rules.argmax_excluding(logits.view(len(rows), positions.shape[1], -1), self.mask_id))[0]
        self.stats.model_time += time.perf_counter() - t0
        self.stats.forwards += len(rows)
        self.stats.positions += int(lengths.sum())
        self.rows.nfe[rows] += 1
        self.rows.positions[rows] += lengths
        for i, n in zip(rows.tolist(), lengths.tolist()):
            rid = self.rows.requests[i].request_id
            self.stats.last_positions[rid] = self.stats.last_positions.get(rid, 0) + n
        return out

    # -- fault isolation -----------------------------------------------------------------------------------------
    def _snapshot(self) -> tuple:
        """Copies of everything a step changes on the host (the KV cache's contents need none: see the module
        docstring)."""
        every = np.arange(self.canvas.size)
        generators = [(r.generator, r.generator.get_state()) for r in self.rows.requests if r.generator is not None]
        lengths = None if self.cache is None else self.cache.lengths.copy()
        return (self.canvas.select(every), self.state.select(every), self.rows.select(every), lengths,
                list(self._free), generators)

    def _restore(self, snapshot: tuple) -> None:
        self.canvas, self.state, self.rows, lengths, free, generators = snapshot
        if lengths is not None:
            self.cache.lengths[: len(lengths)] = lengths
        self._free = list(free)
        for generator, state in generators:
            generator.set_state(state)

    def _replay_rows_alone(self, snapshot: tuple) -> list[RowEvent]:
        """Replay the step that raised one row at a time: rows that raise alone finish with ``"error"``, the others
        continue as they would have (their tokens are those of the batched step)."""
        self.stats.replays += 1
        canvas, state, rows = self.canvas, self.state, self.rows
        events: list[RowEvent] = []
        survivors = []
        forwarded: dict = {}
        for i in range(canvas.size):
            one = np.array([i])
            self.canvas, self.state, self.rows = canvas.select(one), state.select(one), rows.select(one)
            mine: list[RowEvent] = []
            self.stats.last_positions = {}
            try:
                self._decode(mine)
                forwarded.update(self.stats.last_positions)
            except Exception as exc:
                self.canvas, self.state, self.rows = canvas.select(one), state.select(one), rows.select(one)
                self._retire(np.zeros(1, dtype=np.int64), events, reason="error", error=exc)
                continue
            events += mine
            if self.canvas is not None:
                survivors.append((self.canvas, self.state, self.rows))
        self.stats.last_positions = forwarded
        self.canvas = self.state = self.rows = None
        for c, s, r in survivors:
            if self.canvas is None:
                self.canvas, self.state, self.rows = c, s, r
            else:
                self.canvas, self.state, self.rows = self.canvas.concat(c), self.state.concat(s), self.rows.concat(r)
        return events

    def _finish_unstarted(self, req: _Request, reason: str, events: list[RowEvent],
                          error: BaseException | None = None) -> None:
        """A waiting request finishes without running: ``"cancelled"``, or ``"error"`` when its set-up raised."""
        self._known.discard(req.request_id)
        self._cancel.discard(req.request_id)
        n = req.params.max_new_tokens
        out = RequestOutput(req.request_id, req.prompt.tolist(), np.full(n, self.mask_id), np.full(n, -1), [], 0,
                            reason)
        events.append(RowEvent(req.request_id, None, 0, [], True, reason, out, error=error))

    # -- joining and leaving -------------------------------------------------------------------------------------
    def _admit(self, events: list[RowEvent]) -> None:
        """Waiting requests join the batch (cancelled ones finish without running)."""
        joining = []
        room = None if self.max_batch is None else self.max_batch - self.num_active
        while self._waiting and (room is None or len(joining) < room):
            req = self._waiting.popleft()
            if req.request_id in self._cancel:
                self._finish_unstarted(req, "cancelled", events)
                continue
            joining.append(req)
        if self.rows is not None and self._cancel:
            ids = [r.request_id for r in self.rows.requests]
            self.rows.cancelled |= np.array([i in self._cancel for i in ids])
        if not joining:
            return
        if not self.isolate_faults:
            self._join(joining)
            return
        try:
            self._join(joining)
        except Exception:
            for req in joining:  # find the request(s) whose set-up raises
                try:
                    self._join([req])
                except Exception as exc:
                    self._finish_unstarted(req, "error", events, error=exc)

    def _join(self, joining: list[_Request]) -> None:
        """Canvas rows, method state and cache rows of ``joining``, appended to the batch (all or nothing)."""
        gen_lengths = [r.params.max_new_tokens for r in joining]
        canvas = build_canvas([r.prompt for r in joining], gen_lengths, mask_id=self.mask_id, filler=-1,
                              device=self.device)
        state = self.method.init_state(canvas, [RowSetup(r.params, r.eos_id, r.generator) for r in joining])
        n = len(joining)
        slots = self._take_slots(n, int(canvas.lengths.max()))
        try:
            rows = _Rows(requests=joining, slots=slots, nfe=np.zeros(n, dtype=np.int64),
                         positions=np.zeros(n, dtype=np.int64),
                         commit_step=np.full((n, max(gen_lengths)), -1, dtype=np.int64),
                         prefix=np.zeros(n, dtype=np.int64), stopped=np.zeros(n, dtype=bool),
                         cancelled=np.zeros(n, dtype=bool))
            if self.canvas is not None:
                canvas, state, rows = self.canvas.concat(canvas), self.state.concat(state), self.rows.concat(rows)
        except BaseException:
            self._release_slots(slots)
            raise
        self.canvas, self.state, self.rows = canvas, state, rows

    def _take_slots(self, n: int, length: int) -> np.ndarray:
        """Cache rows for ``n`` joining requests (reusing released ones; the cache grows when it has to)."""
        if not self.method.uses_cache:
            return np.zeros(n, dtype=np.int64)
        if self.cache is None:
            self.cache = self.model.new_cache(n, length)
            self._free = list(range(n))
        if len(self._free) < n:
            size = self.cache.batch_size
            grow = max(n - len(self._free), size)  # doubling: rare reallocations as the batch grows
            self.cache.ensure_rows(size + grow)
            self._free += range(size, size + grow)
        self.cache.ensure_capacity(length)
        slots = np.array(sorted(self._free)[:n], dtype=np.int64)
        self._free = sorted(set(self._free) - set(slots.tolist()))
        self.cache.lengths[slots] = 0
        return slots

    def _release_slots(self, slots: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.lengths[slots] = 0
            self._free = sorted(self._free + slots.tolist())

    def _retire(self, gone: np.ndarray, events: list[RowEvent], reason: str | None,
                error: BaseException | None = None) -> None:
        """Rows ``gone`` leave the batch: their outputs are final, their cache rows are released. ``reason``: None
        (cancelled or cut at the step cap), ``"done"`` (the method finished them) or ``"error"`` (``error``)."""
        canvas, rows = self.canvas, self.rows
        gen = canvas.gen()
        masked = gen == self.mask_id
        self._record(masked)  # e.g. early-stop fills made by this step's plan
        for i in gone.tolist():
            req = rows.requests[i]
            n = int(canvas.gen_lengths[i])
            generated = gen[i, :n].copy()
            tokens = generated.tolist()
            if req.eos_id is not None and req.eos_id in tokens:
                tokens = tokens[: tokens.index(req.eos_id)]
            why = reason
            if why is None:
                why = "cancelled" if rows.cancelled[i] else "length"
            elif why == "done":
                why = "stop" if len(tokens) < n else "length"
            out = RequestOutput(req.request_id, req.prompt.tolist(), generated, rows.commit_step[i, :n].copy(),
                                tokens, int(rows.nfe[i]), why, int(rows.positions[i]))
            prefix = int(np.argmax(masked[i])) if masked[i].any() else n
            new = [] if error is not None else self._stream(i, gen[i], prefix)
            events.append(RowEvent(req.request_id, None, prefix, new, True, why, out, error=error))
            self._known.discard(req.request_id)
            self._cancel.discard(req.request_id)
        self._release_slots(rows.slots[gone])
        keep = np.setdiff1d(np.arange(canvas.size), gone)
        if keep.size == 0:
            self.canvas = self.state = self.rows = None
            return
        self.canvas, self.state, self.rows = canvas.select(keep), self.state.select(keep), rows.select(keep)

    def _forward(self, plan: StepPlan) -> torch.Tensor:
        """Logits ``[n, K, V]`` at ``plan.score_pos``: packed forwards in which each row forwards its positions
        ``[start, end)`` against its own cache row (see :mod:`d3llm.models.packed`), consecutive rows packed
        together up to ``max_forward_tokens`` tokens per forward."""
        t0 = time.perf_counter()
        starts, ends = plan.start, plan.end
        cache = self.cache if self.method.uses_cache else None
        slots = self.rows.slots
        kv_lens = None if cache is None else np.maximum(cache.lengths[slots], ends)
        lengths = ends - starts
        n, k = plan.score_pos.shape
        out = []
        for i0, i1 in self._forward_groups(lengths):
            rows = PackedRows.from_slices(starts[i0:i1], ends[i0:i1], None if kv_lens is None else kv_lens[i0:i1],
                                          slots[i0:i1])
            tokens = self.canvas.x[np.repeat(np.arange(i0, i1), rows.lengths), rows.positions]
            at = np.minimum(np.maximum(plan.score_pos[i0:i1] - starts[i0:i1, None], 0), rows.lengths[:, None] - 1)
            at += rows.offsets[:, None]
            out.append(self.model.forward_packed(torch.from_numpy(tokens).to(self.device), rows,
                                                 torch.from_numpy(at.reshape(-1)).to(self.device), cache=cache))
        logits = out[0] if len(out) == 1 else torch.cat(out)
        if cache is not None:
            cache.lengths[slots] = plan.cache_length  # planned by the method, within [0, row length]
        if self._sync:
            torch.cuda.synchronize(self.device)
        self.stats.model_time += time.perf_counter() - t0
        self.stats.steps += 1
        self.stats.forwards += n
        self.stats.positions += int(lengths.sum())
        self.rows.positions += lengths
        self.stats.last_positions = dict(zip(self.active_ids, lengths.tolist()))
        return logits.view(n, k, -1)

    def _forward_groups(self, lengths: np.ndarray) -> list[tuple[int, int]]:
        """Consecutive rows ``[i0, i1)`` packed into one forward: at most ``max_forward_tokens`` tokens each (a
        longer row goes alone)."""
        budget = self.max_forward_tokens
        if budget is None or len(lengths) == 1 or int(lengths.sum()) <= budget:
            return [(0, len(lengths))]
        groups, i0, total = [], 0, 0
        for i, n in enumerate(lengths.tolist()):
            if i > i0 and total + n > budget:
                groups.append((i0, i))
                i0, total = i, 0
            total += n
        groups.append((i0, len(lengths)))
        return groups

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def _record(self, masked: np.ndarray) -> None:
        """Generated positions that stopped being masked (``masked``: ``[n, max N]`` the masks now) get the row's
        current step index (its NFE)."""
        steps = self.rows.commit_step[:, : masked.shape[1]]
        r, c = np.nonzero(~masked & (steps < 0))
        if r.size:
            steps[r, c] = self.rows.nfe[r]

    def _stream(self, i: int, gen_row: np.ndarray, prefix: int) -> list[int]:
        """The part of row i's committed prefix not reported yet, cut at the first EOS."""
        rows = self.rows
        if prefix <= rows.prefix[i] or rows.stopped[i]:
            return []
        new = gen_row[rows.prefix[i] : prefix].tolist()
        rows.prefix[i] = prefix
        eos = rows.requests[i].eos_id
        if eos is not None and eos in new:
            rows.stopped[i] = True
            return new[: new.index(eos)]
        return new

    def _progress(self, events: list[RowEvent], steps: list[int], commit: Commit, gen: np.ndarray,
                  masked: np.ndarray) -> None:
        """One event per row that decoded in this step (``gen``: the generation regions after it, ``masked``: their
        masks)."""
        canvas, rows = self.canvas, self.rows
        first = masked.argmax(axis=1)
        prefix = np.where(masked[np.arange(len(first)), first], first, canvas.gen_lengths).tolist()
        starts = canvas.gen_start.tolist()
        for i, req in enumerate(rows.requests):
            events.append(RowEvent(req.request_id, steps[i], prefix[i], self._stream(i, gen[i], prefix[i]),
                                   _commit=(commit.transfer[i], commit.positions[i], starts[i])))
