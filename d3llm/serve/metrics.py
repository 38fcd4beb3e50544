"""The server's Prometheus metrics (``GET /metrics``, prometheus-client's ASGI app on a registry of its own).

=====================================  ========================================================================
``d3llm_requests_total``               HTTP requests by endpoint and status code
``d3llm_requests_finished_total``      decoding requests by finish reason (stop, length, cancelled, error)
``d3llm_queue_depth``                  requests accepted and not yet decoding
``d3llm_active_rows``                  rows in the running batch
``d3llm_engine_steps_total``           engine steps; ``d3llm_engine_steps_per_second`` over the last 10 s
``d3llm_generation_tokens_total``      committed tokens sent; ``d3llm_generation_tokens_per_second`` (10 s)
``d3llm_prompt_tokens_total``          prompt tokens of accepted requests
``d3llm_tokens_per_forward``           completion tokens / row forwards of the finished requests (TPF)
``d3llm_request_latency_seconds``      submission to the last token (histogram)
``d3llm_time_to_first_token_seconds``  submission to the first committed text (histogram)
``d3llm_step_duration_seconds``        one engine step (histogram)
``d3llm_step_rows``                    rows that ran a forward in each engine step (histogram)
``d3llm_cancel_delay_steps``           engine steps from a cancellation to the row leaving the batch (histogram)
``d3llm_engine_alive``                 1 while the engine thread runs, 0 once it is dead for good
``d3llm_engine_restarts_total``        fresh engines started after the engine thread died
=====================================  ========================================================================
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
WINDOW_S = 10.0


class RateWindow:
    """Events per second over the last ``WINDOW_S`` seconds (thread-safe; read at scrape time)."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def add(self, amount: float, at: float | None = None) -> None:
        with self._lock:
            self._events.append((time.monotonic() if at is None else at, amount))

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - WINDOW_S:
                self._events.popleft()
            return sum(a for _, a in self._events) / WINDOW_S


class ServerMetrics:
    """Every metric of one server, on its own registry (several servers can live in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("d3llm_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.finished = Counter("d3llm_requests_finished", "Decoding requests by finish reason", ["reason"],
                                registry=r)
        self.queue_depth = Gauge("d3llm_queue_depth", "Requests accepted and not yet decoding", registry=r)
        self.active_rows = Gauge("d3llm_active_rows", "Rows in the running batch", registry=r)
        self.steps = Counter("d3llm_engine_steps", "Engine steps", registry=r)
        self.tokens = Counter("d3llm_generation_tokens", "Committed tokens sent to clients", registry=r)
        self.prompt_tokens = Counter("d3llm_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.latency = Histogram("d3llm_request_latency_seconds", "Submission to the last token", registry=r,
                                 buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("d3llm_time_to_first_token_seconds", "Submission to the first committed text",
                              registry=r, buckets=LATENCY_BUCKETS)
        self.step_time = Histogram("d3llm_step_duration_seconds", "One engine step", registry=r,
                                   buckets=STEP_BUCKETS)
        self.step_rows = Histogram("d3llm_step_rows", "Rows that ran a forward in each engine step", registry=r,
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.cancel_delay = Histogram("d3llm_cancel_delay_steps", "Engine steps from a cancellation to the row "
                                      "leaving the batch", registry=r, buckets=(0, 1, 2, 4, 8, 16))
        self.alive = Gauge("d3llm_engine_alive", "1 while the engine thread runs", registry=r)
        self.restarts = Counter("d3llm_engine_restarts", "Fresh engines started after the engine thread died",
                                registry=r)
        self._step_rate, self._token_rate = RateWindow(), RateWindow()
        self._done_tokens = self._done_forwards = 0
        self._lock = threading.Lock()
        Gauge("d3llm_engine_steps_per_second", f"Engine steps per second over the last {WINDOW_S:g} s",
              registry=r).set_function(self._step_rate.rate)
        Gauge("d3llm_generation_tokens_per_second", f"Committed tokens per second over the last {WINDOW_S:g} s",
              registry=r).set_function(self._token_rate.rate)
        Gauge("d3llm_tokens_per_forward", "Completion tokens per row forward of the finished requests",
              registry=r).set_function(self._tpf)

    def _tpf(self) -> float:
        with self._lock:
            return self._done_tokens / self._done_forwards if self._done_forwards else 0.0

    def step(self, seconds: float, rows: int, active: int, waiting: int) -> None:
        """After an engine step in which ``rows`` rows ran a forward; ``active`` remain in the batch, ``waiting``
        requests queue."""
        self.steps.inc()
        if rows:
            self.step_rows.observe(rows)
        self._step_rate.add(1)
        self.step_time.observe(seconds)
        self.active_rows.set(active)
        self.queue_depth.set(waiting)

    def sent_tokens(self, n: int) -> None:
        if n:
            self.tokens.inc(n)
            self._token_rate.add(n)

    def request_done(self, reason: str, tokens: int, forwards: int, latency: float | None) -> None:
        self.finished.labels(reason).inc()
        if reason in ("stop", "length"):
            with self._lock:
                self._done_tokens += tokens
                self._done_forwards += forwards
            if latency is not None:
                self.latency.observe(latency)
