"""The engine thread: the one owner of the model and of the :class:`d3llm.Engine` (the one decoding loop).

HTTP handlers never touch the engine. They :meth:`EngineWorker.submit` a :class:`Job` and :meth:`~EngineWorker.cancel`
it; both only put a command in the worker's inbox. The worker thread loops::

    apply the inbox: add requests to the engine (a bad one is answered 400 alone), cancel rows
    engine.step()            # waiting requests join the running batch, finished ones leave it
    for every row event:     # committed prefix text only
        job.text.push(new tokens) -> text delta to the handler (stop strings and max_tokens end it: cancel the row)
        row finished -> the finish reason and usage to the handler

so a cancellation (a client that went away, a stop string) is applied before the next step, and the row leaves the
batch in that step. The thread blocks on the inbox while the engine is idle. Messages to a handler go through its
``deliver`` callable (thread-safe: the server passes ``loop.call_soon_threadsafe`` onto an ``asyncio.Queue``):

``("accepted",)``, ``("rejected", APIError)``, ``("text", str)``, ``("done", finish_reason, usage)``,
``("error", APIError)``.

Faults stay with the request that caused them. The engine runs with fault isolation (:class:`d3llm.Engine`,
``isolate_faults``): a row that raises while it joins or decodes finishes alone, and its handler gets an ``error``
(400 ``invalid_parameter`` for a :class:`~d3llm.errors.GenerationError`, else 500 ``internal_error``); the other
rows go on. Should the engine thread die anyway (an exception outside a row's step), every request it held gets a
500 ``engine_error`` (never a hang), and the worker starts a fresh engine on the same model with the same settings
(``d3llm_engine_restarts_total``; ``/health`` reports the last failure). Requests still in the inbox are decoded by
the new engine. More than :data:`MAX_RESTARTS` deaths within :data:`RESTART_WINDOW_S` seconds leave the worker
dead: every request is then answered 503 until the server is restarted.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from d3llm.errors import GenerationError
from d3llm.serve.metrics import ServerMetrics
from d3llm.serve.protocol import APIError, usage
from d3llm.serve.text import TextStream

log = logging.getLogger("d3llm.serve")
_STOP = object()
MAX_RESTARTS = 5  # engine deaths tolerated within RESTART_WINDOW_S before the worker gives up
RESTART_WINDOW_S = 60.0


@dataclass
class Job:
    """One request in flight.

    Attributes:
        id: the request id (also the engine's).
        prompt: prompt token ids.
        params: the engine's per-row parameters (``max_new_tokens``, ``temperature``, ``threshold``, ...).
        seed: the row's sampling seed (None: unseeded).
        text: turns the committed prefix into text (stop strings, ``max_tokens``).
        deliver: hands a message (module docstring) to the request's handler; called from the engine thread.
        param_names: the request's own names of the engine parameters, for error messages (engine name -> field).
    """

    id: str
    prompt: list[int]
    params: dict[str, Any]
    seed: int | None
    text: TextStream
    deliver: Callable[[tuple], None]
    param_names: dict[str, str] = field(default_factory=dict)
    submitted: float = field(default_factory=time.monotonic)
    first_text: float | None = None


class EngineWorker:
    """Runs an :class:`~d3llm.Engine` in a thread of its own (see the module docstring).

    Args:
        engine: the engine (its ``max_batch`` bounds the running batch).
        metrics: where steps, tokens and latencies are recorded.
        max_queue: requests that may wait for a row; a submission beyond ``max_batch + max_queue`` in flight is
            refused with 503.
    """

    def __init__(self, engine, metrics: ServerMetrics, max_queue: int = 256) -> None:
        engine.isolate_faults = True
        self.engine = engine
        self.metrics = metrics
        self.capacity = (engine.max_batch or 1 << 30) + max_queue
        self.error: BaseException | None = None  # what killed the worker for good
        self.last_failure: str | None = None  # the last engine death it recovered from
        self.restarts = 0
        self._deaths: list[float] = []
        self.steps = 0  # engine.step() calls (steps whose rows all left without a forward count too)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[str, Job] = {}  # engine thread only
        self._cancelled_at: dict[str, int] = {}  # request id -> self.steps when its cancellation was applied
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="d3llm-engine", daemon=True)

    # -- any thread ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.metrics.alive.set(1)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, job: Job) -> None:
        """Queue ``job``; its handler then receives ``accepted`` or ``rejected`` first. Raises a 503 when the engine
        is dead or the queue is full."""
        if not self.alive:
            raise APIError(503, f"the decoding engine is not running ({self._death()}); restart the server",
                           code="engine_dead")
        with self._lock:
            if self._in_flight >= self.capacity:
                raise APIError(503, f"the server is at capacity ({self._in_flight} requests in flight: "
                                    f"{self.capacity} = --max-batch + --max-queue); retry later",
                               code="queue_full", headers={"Retry-After": "1"})
            self._in_flight += 1
        self._inbox.put(("add", job))

    def cancel(self, job_id: str) -> None:
        """The row of ``job_id`` leaves the batch at the next step (nothing more is delivered for it)."""
        self._inbox.put(("cancel", job_id))

    def _death(self) -> str:
        return describe(self.error) if self.error is not None else "stopped"

    def health(self) -> dict:
        """What ``/health`` reports while the worker runs: restarts and the last failure it recovered from."""
        out: dict[str, Any] = {"status": "ok"}
        if self.restarts:
            out.update(engine_restarts=self.restarts, last_engine_failure=self.last_failure)
        return out

    # -- the engine thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except BaseException as exc:  # the engine is in an unknown state: fail what it held, start a new one
                log.exception("the decoding engine died")
                failure = APIError(500, f"the decoding engine failed while decoding this request ({describe(exc)}); "
                                        f"it was restarted: retry the request", code="engine_error")
                for job in list(self._jobs.values()):
                    self._end(job, "error")
                    job.deliver(("error", failure))
                self._cancelled_at.clear()
                if not self._restart(exc):
                    self._fail_inbox(APIError(500, f"the decoding engine failed ({describe(exc)})",
                                              code="engine_error"))
                    return

    def _restart(self, exc: BaseException) -> bool:
        """A fresh engine after ``exc`` killed the last one; False (the worker is dead) when it cannot be made or
        engines die too often."""
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if t > now - RESTART_WINDOW_S] + [now]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or len(self._deaths) > MAX_RESTARTS:
            self.error = exc
        else:
            try:
                self.engine = self.engine.fresh()
            except Exception as failed:  # e.g. out of memory: nothing left to decode with
                log.exception("the decoding engine could not be restarted")
                self.error = failed
        if self.error is not None:
            self.metrics.alive.set(0)
            return False
        self.restarts += 1
        self.last_failure = describe(exc)
        self.metrics.restarts.inc()
        return True

    def _loop(self) -> None:
        while True:
            if not self._apply_inbox(block=not self.engine.has_work):
                return
            if self.engine.has_work:
                t0 = time.perf_counter()
                events = self.engine.step()
                self.steps += 1
                for event in events:
                    self._on_event(event)
                active = self.engine.num_active
                rows = len(self.engine.stats.last_positions)  # rows that ran a forward in this step
                self.metrics.step(time.perf_counter() - t0, rows, active, max(self._in_flight - active, 0))

    def _apply_inbox(self, block: bool) -> bool:
        """Apply the waiting commands (waiting for one when ``block``). False when asked to stop."""
        try:
            command = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if command is _STOP:
                return False
            kind, arg = command
            if kind == "add":
                self._add(arg)
            else:
                self._cancel(arg)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _fail_inbox(self, failure: APIError) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if command is not _STOP and command[0] == "add":
                with self._lock:
                    self._in_flight -= 1
                command[1].deliver(("error", failure))

    def _add(self, job: Job) -> None:
        try:
            self.engine.add_request(job.prompt, request_id=job.id, seed=job.seed, **job.params)
        except Exception as exc:  # a bad request (400), or a fault of its own (500): it alone is refused
            with self._lock:
                self._in_flight -= 1
            job.deliver(("rejected", self._request_error(exc, job)))
            return
        self._jobs[job.id] = job
        self.metrics.prompt_tokens.inc(len(job.prompt))
        job.deliver(("accepted",))

    def _request_error(self, exc: BaseException, job: Job) -> APIError:
        """The answer to a request that failed on its own: 400 naming the field its values broke, else 500."""
        if isinstance(exc, GenerationError):
            return APIError(400, str(exc), code="invalid_parameter", param=self._blame(str(exc), job))
        log.error("request %s failed: %s", job.id, describe(exc), exc_info=exc)
        return APIError(500, f"decoding this request failed ({describe(exc)}); the server goes on serving other "
                             f"requests", code="internal_error")

    @staticmethod
    def _blame(message: str, job: Job) -> str | None:
        """The request field an engine error message is about: the first of the request's parameters it names (the
        engine's messages start with the value at fault, ``"fast_dllm: steps must be ... max_new_tokens=48"``)."""
        found = [(m.start(), f) for name, f in job.param_names.items()
                 if (m := re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message))]
        return min(found)[1] if found else None

    def _cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        self.engine.cancel(job_id)
        self._cancelled_at[job_id] = self.steps
        self._end(job, "cancelled")

    def _end(self, job: Job, reason: str, nfe: int = 0, tokens: int = 0) -> None:
        """The job leaves; ``tokens`` (its completion tokens) and ``nfe`` count for a finished one (stop/length)."""
        self._jobs.pop(job.id, None)
        with self._lock:
            self._in_flight -= 1
        latency = time.monotonic() - job.submitted
        self.metrics.request_done(reason, tokens, nfe, latency)

    def _on_event(self, event) -> None:
        job = self._jobs.get(event.request_id)
        if job is None:  # cancelled earlier; now it has left the batch
            if event.finished and event.request_id in self._cancelled_at:
                self.metrics.cancel_delay.observe(self.steps - self._cancelled_at.pop(event.request_id))
            return
        if event.error is not None:  # this row alone raised (fault isolation)
            self._end(job, "error")
            job.deliver(("error", self._request_error(event.error, job)))
            return
        taken = len(job.text.tokens)
        delta = job.text.push(event.new_tokens)
        if event.finished and not job.text.finished:
            delta += job.text.close()
        self.metrics.sent_tokens(len(job.text.tokens) - taken)
        if delta:
            if job.first_text is None:
                job.first_text = time.monotonic()
                self.metrics.ttft.observe(job.first_text - job.submitted)
            job.deliver(("text", delta))
        nfe = event.output.nfe if event.finished else event.step + 1
        if job.text.finish_reason is not None and not event.finished:  # a stop string or max_tokens: cut the row
            self.engine.cancel(job.id)
            self._cancelled_at[job.id] = self.steps
        elif not event.finished:
            return
        reason = job.text.finish_reason or ("stop" if event.finish_reason == "stop" else "length")
        tokens = job.text.completion_tokens()
        self._end(job, reason, nfe, tokens)
        job.deliver(("done", reason, usage(len(job.prompt), tokens, nfe)))


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line and short enough for an error body."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}" if text else type(exc).__name__
