"""Serving benchmark: a bounded load test of ``d3llm serve`` on 127.0.0.1.

It starts the server itself (a subprocess on a free port), sends the same fixed list of streaming chat requests
from N concurrent clients for every N (default 1, 4, 16: each client takes the next unsent request until none are
left), and reports per N: aggregate tokens/s (completion tokens of all requests / wall time from the first request
to the last answer), time to first committed token (the first chunk with text) and request latency, p50 and p99,
plus the ratio of every N's tokens/s to one client at a time, measured in the same run against the same server. For
reference it then decodes the same requests with :class:`d3llm.Engine` in its own process, at most N in flight (the
batching gain of the engine itself, without HTTP: the ceiling of the server's ratio). It writes JSON stamped with
the hardware and software versions.

    flock -x /work/cpu.lock python benchmarks/serve.py --threads 1          # the shipped teacher
    python benchmarks/serve.py --model DIR --requests 128 --clients 1 8 32 --server-arg --max-batch=32
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

import d3llm
from d3llm.eval.environment import environment, record_path, write_record
from d3llm.serve.launch import launched_server
from d3llm.tasks import load_dataset


def stream_one(url, body: dict, timeout: float) -> dict:
    """One streaming chat request on its own connection: when its first text and its end arrived, and its usage."""
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    t0 = time.perf_counter()
    first = usage = None
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    finally:
        conn.close()
    done = time.perf_counter()
    if usage is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return {"start": t0, "ttft": (first or done) - t0, "latency": done - t0, "tokens": usage["completion_tokens"],
            "nfe": usage["nfe"]}


def load(url: str, bodies: list[dict], clients: int, timeout: float) -> dict:
    """Send every request of ``bodies`` from ``clients`` concurrent clients; the figures of the run."""
    todo = list(enumerate(bodies))
    lock = threading.Lock()
    results: list[dict] = []
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                _, body = todo.pop(0)
            try:
                r = stream_one(url, body, timeout)
            except BaseException as exc:  # reported after the run
                errors.append(exc)
                return
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * len(bodies))
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed; first: {errors[0]!r}")
    if len(results) != len(bodies):
        raise RuntimeError(f"only {len(results)} of {len(bodies)} requests finished within the time limit")
    tokens = sum(r["tokens"] for r in results)
    ttft, latency = [r["ttft"] for r in results], [r["latency"] for r in results]
    return {
        "clients": clients, "requests": len(results), "completion_tokens": tokens,
        "nfe": sum(r["nfe"] for r in results), "wall_s": round(wall, 4), "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(results) / wall, 2),
        "ttft_p50_ms": round(1000 * float(np.percentile(ttft, 50)), 1),
        "ttft_p99_ms": round(1000 * float(np.percentile(ttft, 99)), 1),
        "latency_p50_ms": round(1000 * float(np.percentile(latency, 50)), 1),
        "latency_p99_ms": round(1000 * float(np.percentile(latency, 99)), 1),
        "ttft_mean_ms": round(1000 * statistics.fmean(ttft), 1),
    }


def engine_alone(folder: str, server_args: list[str], prompts: list[list[int]], clients: list[int],
                 threads: int, max_tokens: int | None) -> tuple[list[dict], object]:
    """The same requests through :class:`d3llm.Engine` in this process, with at most N in flight: how much batching
    the engine itself gains on this machine (the ceiling for the server's ratio). Returns the runs and the model
    (loaded where and as the server runs it)."""
    import torch

    from d3llm.cli.main import build_parser
    from d3llm.cli.options import decoder_params

    args = build_parser().parse_args(["serve", *server_args])
    torch.set_num_threads(threads)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)  # where and as the server runs it
    own = {} if max_tokens is None else {"max_new_tokens": max_tokens}  # the requests' max_tokens, as served
    out = []
    for n in [clients[0], *clients]:  # the first run warms up
        engine = d3llm.Engine(model, args.method, max_batch=args.max_batch, **decoder_params(args))
        todo, tokens = list(prompts), 0
        t0 = time.perf_counter()
        while todo or engine.has_work:
            while todo and engine.num_active + engine.num_waiting < n:
                engine.add_request(todo.pop(0), **own)
            tokens += sum(len(e.new_tokens) for e in engine.step())
        out.append({"clients": n, "tokens_per_s": round(tokens / (time.perf_counter() - t0), 1)})
    out = out[1:]
    add_speedups(out, out[0])
    return out, model


def add_speedups(runs: list[dict], base: dict) -> None:
    """Each run's tokens/s over ``base``'s (one at a time), as ``speedup_vs_one_at_a_time``."""
    for r in runs:
        r["speedup_vs_one_at_a_time"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped teacher)")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default: 64)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    p.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (default: the "
                                                                   "folder's max_new_tokens)")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (default: 1)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="another argument for d3llm serve (repeatable, e.g. --server-arg=--max-batch=32)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for any one request")
    p.add_argument("--out", type=record_path, default="benchmarks/results/serve.json", help="JSON output file")
    args = p.parse_args(argv)

    from d3llm.assets import default_model_path

    folder = args.model or str(default_model_path())
    questions = load_dataset("arith:test")
    bodies = []
    for i in range(args.requests):
        body = {"messages": [{"role": "user", "content": questions[i % len(questions)].question}],
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        if args.max_tokens is not None:
            body["max_tokens"] = args.max_tokens
        bodies.append(body)
    server_args = ["--model", folder, "--threads", str(args.threads), *args.server_arg]
    runs = []
    with launched_server(server_args) as server:
        load(server.url, bodies[: min(8, len(bodies))], 4, args.timeout)  # warm-up: first forwards, connections
        for clients in args.clients:
            run = load(server.url, bodies, clients, args.timeout)
            runs.append(run)
            print(f"{clients:3d} clients: {run['tokens_per_s']:8.1f} tokens/s  TTFT p50 {run['ttft_p50_ms']:7.1f} ms "
                  f"p99 {run['ttft_p99_ms']:7.1f} ms  latency p50 {run['latency_p50_ms']:7.1f} ms "
                  f"p99 {run['latency_p99_ms']:7.1f} ms", flush=True)
    base = next((r for r in runs if r["clients"] == 1), None)
    if base is not None:
        add_speedups(runs, base)
    tokenizer = d3llm.load_tokenizer(folder)
    prompts = [d3llm.encode_prompt(tokenizer, b["messages"][0]["content"]) for b in bodies]
    alone, model = engine_alone(folder, server_args, prompts, args.clients, args.threads, args.max_tokens)
    for r in alone:
        print(f"engine alone, {r['clients']:3d} in flight: {r['tokens_per_s']:8.1f} tokens/s "
              f"({r['speedup_vs_one_at_a_time']}x)")
    record = {
        "benchmark": "serve", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model_folder": folder, "server_args": server_args, "requests": args.requests,
        "environment": {**environment(model), "server_threads": args.threads}, "runs": runs,
        "engine_alone": alone,
    }
    out = write_record(args.out, record)
    print("\n| clients | tokens/s | vs 1 client | TTFT p50 / p99 (ms) | latency p50 / p99 (ms) |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['clients']} | {r['tokens_per_s']:,.0f} | {r.get('speedup_vs_one_at_a_time', '')} | "
              f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['latency_p50_ms']} / {r['latency_p99_ms']} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
