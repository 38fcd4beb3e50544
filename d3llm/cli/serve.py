"""d3llm serve: an OpenAI-compatible HTTP server with continuous batching and streaming.

    d3llm serve                                   # the shipped teacher on http://127.0.0.1:8000/v1
    d3llm serve --model DIR --port 8000 --api-key KEY --method multi_block --threshold 0.5 --max-batch 32

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (the model's chat template),
GET /health, GET /metrics (Prometheus). One engine thread owns the model: every step, waiting requests join the
running batch and finished ones leave it. Streams carry committed text only. The decoding method and the parameters
every row shares are fixed at launch (flags, else the model folder's generation_config.json); a request sets
max_tokens, temperature, seed, stop, stream, stream_options.include_usage and the method's per-row parameters
(e.g. threshold) as extra body fields. With --api-key (or D3LLM_API_KEY) every endpoint but /health needs
'Authorization: Bearer KEY' (an empty key is refused). Binds 127.0.0.1 unless --host says otherwise. A request that
fails is answered alone (400 or 500); if the engine thread dies, it is restarted and /health says so. One access-log
line per request goes to stderr (--no-access-log turns it off). Needs the serve extra: pip install 'd3llm[serve]'.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from d3llm.cli.options import add_decoder_flags, add_model_flags, add_parser, apply_threads, decoder_params, model_folder

SERVE_NOTE = ("fixed for the server's lifetime; flags not given take the model folder's generation_config.json "
              "defaults, else the method's built-in defaults. Per-row parameters (max_new_tokens, temperature, "
              "threshold, steps) are the defaults of requests that do not set them")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "serve", "serve a model over an OpenAI-compatible HTTP API", __doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: the "
                        "D3LLM_API_KEY environment variable, else no key)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: the model folder's name)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="rows decoded together (default: 32)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests that may wait for a row; beyond, 503 with Retry-After (default: 256)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body; beyond, 413 (default: 1 MiB)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a request body may take to arrive; beyond, 408 (default: 30)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not log a line per request (client, method, path, status, tokens, seconds; never a "
                        "prompt or a key) to stderr")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default: warning); the access log is separate")
    add_model_flags(p)
    add_decoder_flags(p, seed=False, note=SERVE_NOTE)
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), so the address is known before serving."""
    from d3llm.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port (0 picks "
                          f"a free one) or --host") from None
    sock.listen(2048)
    return sock


def api_key_setting(flag: str | None) -> str | None:
    """The key from ``--api-key``, else ``D3LLM_API_KEY``, else None (no authentication). An empty key, given or
    in the environment, is an error: it would silently turn authentication off."""
    from d3llm.errors import ConfigError

    if flag is not None:
        if not flag.strip():
            raise ConfigError("--api-key is empty; give a non-empty key (or leave --api-key out to serve without "
                              "authentication)")
        return flag
    env = os.environ.get("D3LLM_API_KEY")
    if env is not None and not env.strip():
        raise ConfigError("the environment variable D3LLM_API_KEY is set but empty; set a non-empty key or unset "
                          "it to serve without authentication")
    return env


def log_to_stderr() -> None:
    """The server's own loggers (the access log, request failures, engine restarts) print to stderr."""
    logger = logging.getLogger("d3llm.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def warm_up(engine, ids: list[int]) -> None:
    """One decode (the engine's default length) before the first request, so that it does not pay the first
    forward's set-up cost."""
    engine.add_request(ids, request_id="warm-up")
    while engine.has_work:
        engine.step()


def run(args: argparse.Namespace) -> int:
    from d3llm.errors import ConfigError

    try:
        import uvicorn

        from d3llm.serve.app import ServeConfig, Server, create_app
    except ImportError as exc:
        raise ConfigError(f"d3llm serve needs the serve extra ({exc.name} is missing): pip install 'd3llm[serve]'")
    import d3llm

    for flag, value, low, high, what in (("--max-batch", args.max_batch, 1, None, "a positive number"),
                                         ("--max-queue", args.max_queue, 0, None, "0 or more"),
                                         ("--max-body-bytes", args.max_body_bytes, 1, None, "a positive number"),
                                         ("--port", args.port, 0, 65535, "a port number from 0 to 65535 (0 picks "
                                                                         "a free one)")):
        if value < low or (high is not None and value > high):
            raise ConfigError(f"{flag} must be {what}, got {value}")
    if not args.body_timeout > 0 or args.body_timeout == float("inf"):
        raise ConfigError(f"--body-timeout must be a positive number of seconds, got {args.body_timeout}")
    api_key = api_key_setting(args.api_key)
    folder = model_folder(args)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)
    apply_threads(args.threads, model)
    tokenizer = d3llm.load_tokenizer(folder)
    engine = d3llm.Engine(model, args.method, max_batch=args.max_batch, isolate_faults=True, **decoder_params(args))
    name = args.served_model_name or Path(folder).resolve().name
    server = Server(engine, tokenizer, ServeConfig(model_name=name, api_key=api_key, max_queue=args.max_queue,
                                                   max_body_bytes=args.max_body_bytes,
                                                   body_timeout=args.body_timeout, access_log=args.access_log))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if weight_bytes >= 1e9:  # memory-mapped weights are read from disk by the first forward: seconds to minutes
        print(f"d3llm serve: warming up (the first forward reads the {weight_bytes / 1e9:.1f} GB of weights from "
              "disk)", file=sys.stderr, flush=True)
    warm_up(engine, d3llm.encode_prompt(tokenizer, "") if tokenizer.chat_template else tokenizer.encode("a"))
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not _is_loopback(args.host) and not api_key:
        print(f"d3llm serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              f"machine can use the server", file=sys.stderr)

    def ready() -> None:
        print(f"d3llm serve: http://{shown}:{port}/v1  model '{name}'  method {engine.method_name}  "
              f"max batch {args.max_batch}  (Ctrl-C stops)", flush=True)

    app = create_app(server, on_ready=ready)
    log_to_stderr()
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=5,
                            lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    if server.worker.error is not None:
        print(f"d3llm serve: the decoding engine died: {server.worker.error!r}", file=sys.stderr)
        return 1
    return 0
