"""The HTTP layer: a FastAPI app in front of one :class:`~d3llm.serve.worker.EngineWorker`.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the model's chat template),
``GET``/``HEAD /health`` (200 while the engine runs, with its restarts if it had to be restarted; 503 once it is
dead for good), ``GET /metrics`` (Prometheus). Handlers validate a request
(:mod:`d3llm.serve.protocol`), build its prompt ids, submit it to the engine thread and relay what comes back, as
one JSON response or as server-sent events (``data: {chunk}`` lines ending with ``data: [DONE]``). Only committed
text is ever sent (:mod:`d3llm.serve.text`).

``max_tokens`` (chat: also ``max_completion_tokens``) means what it means to a vLLM user: the generation never
exceeds ``max_tokens`` tokens; it ends at the first end-of-text and nothing after it is returned (positions a
diffusion decoder filled after it are dropped); ``finish_reason`` is ``stop`` (the model ended: end-of-text or a stop
string) or ``length`` (``max_tokens`` cut it), streamed or not. For diffusion methods the canvas decoded is
``max_tokens`` rounded up to the block size (:meth:`Server.canvas_length`; a block decoder generates whole blocks),
and the output is cut at ``max_tokens``; a request without it gets the engine's ``max_new_tokens``. No request needs
to know the length the model was trained on. When the model folder declares one (``max_trained_new_tokens`` in
``generation_config.json``), the first request whose canvas exceeds it logs one warning on the ``d3llm.serve``
logger (once per server, not per request): such answers may be worse.

A client that goes away has its row cancelled before the next engine step: every decoding handler awaits the ASGI
``http.disconnect`` message itself (streaming or not), which works behind any pure-ASGI middleware. The API key
check, the request counter and the access log are pure ASGI middlewares for that reason (Starlette's
``BaseHTTPMiddleware`` hides the disconnect).

Limits at the boundary: a body larger than ``max_body_bytes`` is a 413, one that has not fully arrived after
``body_timeout`` seconds a 408 (a client holding a request open cannot hold a handler forever); the JSON itself is
bounded by :func:`d3llm.serve.protocol.parse_json`. One request that fails, for whatever reason, is answered alone
(:mod:`d3llm.serve.worker`). The access log has one line per request: client, method, path, status, completion
tokens and seconds; never a prompt, a query string or a key.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from d3llm.models.generation_config import beyond_training_message
from d3llm.models.prompts import encode_text, messages_text
from d3llm.serve import protocol
from d3llm.serve.metrics import ServerMetrics
from d3llm.serve.protocol import APIError, DecodeRequest, EngineFields, bad_request
from d3llm.serve.text import TextStream
from d3llm.serve.worker import EngineWorker, Job

access_log = logging.getLogger("d3llm.serve.access")
log = logging.getLogger("d3llm.serve")
OPEN_PATHS = ("/health",)  # answered without the API key
ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics")


@dataclass
class ServeConfig:
    """Settings of one server.

    Attributes:
        model_name: the name clients use (``model`` field, ``/v1/models``).
        api_key: with a key, every endpoint but ``/health`` requires ``Authorization: Bearer KEY``.
        max_queue: requests that may wait for a row of the running batch (beyond: 503 with ``Retry-After``).
        max_body_bytes: the largest request body (beyond: 413).
        body_timeout: seconds a request body may take to arrive (beyond: 408).
        access_log: one line per request on the ``d3llm.serve.access`` logger.
    """

    model_name: str
    api_key: str | None = None
    max_queue: int = 256
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: give a non-empty key, or none to serve without authentication")


class Server:
    """What the handlers share: the engine thread, the tokenizer, the limits and the metrics."""

    def __init__(self, engine, tokenizer, config: ServeConfig) -> None:
        self.tokenizer, self.config = tokenizer, config  # the engine belongs to the worker (which may replace it)
        self.metrics = ServerMetrics()
        self.worker = EngineWorker(engine, self.metrics, max_queue=config.max_queue)
        params = engine.params.as_dict()
        per_row = tuple(engine.per_row_params)
        self.fields = EngineFields(per_row=per_row, shared={k: v for k, v in params.items() if k not in per_row},
                                   method=engine.method_name, foreign=decoder_parameters() - set(params))
        self.default_max_tokens = engine.params.max_new_tokens
        self.block_size = params.get("block_size")
        self.max_length = engine.model.config.max_length
        self.vocab_size = engine.vocab_size
        generation = getattr(engine.model, "generation_config", None)
        self.max_trained = generation.max_trained_new_tokens if generation is not None else None
        self.max_trained_source = generation.source if generation is not None else None
        self.warned_beyond_training = False  # one warning per server (a process serves one)
        self.created = protocol.now()

    # -- requests ------------------------------------------------------------------------------------------------
    def prompt_ids(self, req: DecodeRequest, kind: str) -> list[int]:
        if kind == "chat":
            if not getattr(self.tokenizer, "chat_template", None):
                raise bad_request("this model's tokenizer has no chat template; use /v1/completions",
                                  param="messages", code="no_chat_template")
            try:
                text = messages_text(self.tokenizer, req.messages)
            except Exception as exc:  # noqa: BLE001  (a template may refuse a conversation: jinja raise_exception)
                raise bad_request(f"the model's chat template rejected the messages: {exc}", param="messages")
            ids = encode_text(self.tokenizer, text)
        elif isinstance(req.prompt, str):
            ids = encode_text(self.tokenizer, req.prompt)
        else:
            bad = [t for t in req.prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise bad_request(f"'prompt' holds token id {bad[0]}, outside this model's vocabulary "
                                  f"[0, {self.vocab_size})", param="prompt")
            ids = list(req.prompt)
        if not ids:
            raise bad_request("the prompt encodes to no tokens", param="messages" if kind == "chat" else "prompt")
        return ids

    def canvas_length(self, max_tokens: int) -> int:
        """Positions a row decodes for ``max_tokens``: rounded up to whole blocks (the output is cut there)."""
        if self.block_size:
            return -(-max_tokens // self.block_size) * self.block_size
        return max_tokens

    def make_job(self, req: DecodeRequest, ids: list[int], kind: str, deliver) -> Job:
        max_tokens = req.max_tokens if req.max_tokens is not None else self.default_max_tokens
        canvas = self.canvas_length(max_tokens)
        field = "messages" if kind == "chat" else "prompt"
        rounded = f" (rounded up to {canvas}, whole blocks of {self.block_size})" if canvas != max_tokens else ""
        if canvas >= self.max_length:
            raise bad_request(f"max_tokens={max_tokens}{rounded} leaves no room for a prompt in this model's maximum "
                              f"length of {self.max_length} tokens", param="max_tokens",
                              code="context_length_exceeded")
        if len(ids) + canvas > self.max_length:
            raise bad_request(f"this model's maximum context length is {self.max_length} tokens; the prompt has "
                              f"{len(ids)} tokens and max_tokens={max_tokens}{rounded} needs {canvas} more; shorten "
                              f"the prompt to at most {self.max_length - canvas} tokens or lower max_tokens",
                              param=field, code="context_length_exceeded")
        self.warn_beyond_training(canvas, max_tokens, req.max_tokens is None)
        params = {"max_new_tokens": canvas, **req.engine_params}
        if req.temperature is not None:
            params["temperature"] = req.temperature
        # the request's own name of each engine parameter (error messages name the field the client sent)
        names = {k: self.fields.openai_names.get(k, k) for k in params}
        if req.seed is not None:
            names["seed"] = "seed"
        limit = max_tokens if max_tokens < canvas else None
        return Job(id=protocol.new_id(kind), prompt=ids, params=params, seed=req.seed,
                   text=TextStream(self.tokenizer, req.stop, limit), deliver=deliver, param_names=names)

    def warn_beyond_training(self, canvas: int, max_tokens: int, default: bool) -> bool:
        """Log one warning, the first time a request's canvas exceeds the length the model was trained for (the
        folder's ``max_trained_new_tokens``); True when this call logged it."""
        if self.warned_beyond_training or self.max_trained is None or canvas <= self.max_trained:
            return False
        self.warned_beyond_training = True
        how = "the server's default max_tokens" if default else f"max_tokens={max_tokens}"
        if canvas != max_tokens:
            how += f", rounded up to whole blocks of {self.block_size}"
        log.warning(beyond_training_message(self.max_trained, canvas, self.max_trained_source, f" ({how})"))
        return True

    async def decode(self, request: Request, kind: str) -> JSONResponse | StreamingResponse:
        body = protocol.parse_json(await read_body(request, self.config.max_body_bytes, self.config.body_timeout))
        req = protocol.parse_request(body, kind, self.fields)
        if req.model is not None and req.model != self.config.model_name:
            raise unknown_model(req.model, self.config.model_name)
        ids = self.prompt_ids(req, kind)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def deliver(message: tuple) -> None:  # called from the engine thread
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, message)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                pass

        job = self.make_job(req, ids, kind, deliver)
        self.worker.submit(job)
        try:
            first = await inbox.get()
        except asyncio.CancelledError:  # the server is shutting down the handler: do not decode for nobody
            self.worker.cancel(job.id)
            raise
        if first[0] != "accepted":
            raise first[1]
        reply = Reply(self, request, job, inbox, kind, req)
        if req.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await reply.whole()


class Reply:
    """Relays one accepted job's messages to its client and cancels the row if the client goes away first."""

    def __init__(self, server: Server, request: Request, job: Job, inbox: asyncio.Queue, kind: str,
                 req: DecodeRequest) -> None:
        self.server, self.request, self.job, self.inbox, self.kind, self.req = server, request, job, inbox, kind, req
        self.created = protocol.now()
        self.done = False

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.server.worker.cancel(self.job.id)
                    self.inbox.put_nowait(("disconnected",))
                return

    def _model(self) -> str:
        return self.server.config.model_name

    async def whole(self) -> JSONResponse:
        watcher = asyncio.create_task(self._watch_disconnect())
        pieces: list[str] = []
        try:
            while True:
                message = await self.inbox.get()
                if message[0] == "text":
                    pieces.append(message[1])
                elif message[0] == "done":
                    self.done = True
                    _, reason, usage = message
                    self.request.state.completion_tokens = usage["completion_tokens"]
                    return JSONResponse(protocol.completion_body(self.kind, self.job.id, self.created, self._model(),
                                                                 "".join(pieces), reason, usage))
                elif message[0] == "error":
                    self.done = True
                    raise message[1]
                else:  # the client went away: nobody reads this
                    return JSONResponse({}, status_code=499)
        finally:
            watcher.cancel()
            if not self.done:
                self.server.worker.cancel(self.job.id)

    async def events(self):
        watcher = asyncio.create_task(self._watch_disconnect())
        rid, model, with_usage = self.job.id, self._model(), self.req.include_usage
        chunk = {"kind": self.kind, "rid": rid, "created": self.created, "model": model}
        try:
            if self.kind == "chat":
                yield protocol.sse(protocol.chunk_body(**chunk, role=True, with_usage=with_usage))
            while True:
                message = await self.inbox.get()
                if message[0] == "text":
                    yield protocol.sse(protocol.chunk_body(**chunk, text=message[1], with_usage=with_usage))
                elif message[0] == "done":
                    self.done = True
                    _, reason, usage = message
                    self.request.state.completion_tokens = usage["completion_tokens"]
                    yield protocol.sse(protocol.chunk_body(**chunk, text="" if self.kind != "chat" else None,
                                                           finish_reason=reason, with_usage=with_usage))
                    if with_usage:
                        yield protocol.sse(protocol.usage_chunk(self.kind, rid, self.created, model, usage))
                    yield protocol.sse("[DONE]")
                    return
                elif message[0] == "error":
                    self.done = True
                    yield protocol.sse(message[1].body())
                    yield protocol.sse("[DONE]")
                    return
                else:
                    return
        finally:
            watcher.cancel()
            if not self.done:
                self.server.worker.cancel(self.job.id)


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (checked while reading, not only by header) and
    with 408 when it has not arrived after ``timeout`` seconds."""
    declared = request.headers.get("content-length")
    too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                         code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s; send it whole, at once",
                       code="request_timeout", headers={"Connection": "close"}) from None


def decoder_parameters() -> frozenset[str]:
    """Every parameter name of every decoding method."""
    from d3llm.decoding.methods import FAMILY_METHODS, METHODS

    methods = (*METHODS.values(), *FAMILY_METHODS.values())
    return frozenset(name for method in methods for name in method.Params.names())


def unknown_model(name: str, served: str) -> APIError:
    """The 404 for a model name this server does not serve."""
    return APIError(404, f"the model '{name}' does not exist; this server serves '{served}'", code="model_not_found",
                    param="model")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class APIKeyMiddleware:
    """Pure ASGI: every HTTP request but ``OPEN_PATHS`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                why = "missing" if not header else "wrong"
                error = APIError(401, f"{why} API key: send the header 'Authorization: Bearer <key>' with the key "
                                      f"the server was started with (--api-key)", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AccessLog:
    """Pure ASGI: one line per HTTP request on the ``d3llm.serve.access`` logger, once its response is sent:
    ``client "METHOD /path" status tokens seconds``. The completion tokens are what a decoding handler put in the
    request's state (``-`` for other requests); prompts, query strings and headers are never logged."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        status = [0]

        async def noting_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            client = scope.get("client") or ("-", 0)
            tokens = state.get("completion_tokens", "-")
            access_log.info('%s:%s "%s %s" %s %s tokens %.3f s', client[0], client[1], scope["method"],
                            scope["path"], status[0] or "-", tokens, time.perf_counter() - t0)


class RequestCounter:
    """Pure ASGI: counts every HTTP response by endpoint and status (``d3llm_requests_total``)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        endpoint = path if path in ENDPOINTS else "other"

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(server: Server, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app of ``server``; its lifespan starts the engine thread (then calls ``on_ready``) and stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            server.worker.stop()

    app = FastAPI(title="d3llm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        if not server.worker.alive:
            return error_response(APIError(503, f"the decoding engine is not running ({server.worker._death()})",
                                           code="engine_dead"))
        return JSONResponse(server.worker.health())

    def model_card() -> dict:
        return {"id": server.config.model_name, "object": "model", "created": server.created, "owned_by": "d3llm",
                "max_model_len": server.max_length, "method": server.fields.method}

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> JSONResponse:
        if name != server.config.model_name:
            raise unknown_model(name, server.config.model_name)
        return JSONResponse(model_card())

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await server.decode(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await server.decode(request, "chat")

    metrics = Mount("/metrics", app=make_asgi_app(registry=server.metrics.registry))
    metrics.path_regex = re.compile("^/metrics(?P<path>.*)$")  # /metrics itself, without a redirect to /metrics/
    app.router.routes.append(metrics)

    if server.config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=server.config.api_key)
    app.add_middleware(RequestCounter, metrics=server.metrics)  # 401s are counted too
    if server.config.access_log:
        app.add_middleware(AccessLog)  # outermost: every request is logged, with its status
    return app
