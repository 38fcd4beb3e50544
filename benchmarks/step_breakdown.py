"""Where a decoding step's time goes, for every method, at any model size (meant for the 8B shape on a CPU or GPU).

For each setting of ``benchmarks/decode.py`` (the same parameters), one request of ``--prompt`` tokens decodes
``--steps`` steps after its first (the first, which admits the request and fills the cache, is reported apart).
Each step's wall time is split into:

* ``forward``: the model forwards (``Engine.stats.model_time``; on CUDA synchronised by the scores' copy below);
* ``scoring``: the method's work on the device before its scores reach the host (entropies, confidences,
  sampling: the part of ``commit`` before ``rules.to_host``);
* ``transfer``: ``rules.to_host``, the step's one device-to-host copy (``tests/test_host_sync.py``), with the bytes
  it copies (per-position scores and tokens: never full-vocabulary logits);
* ``host commit``: the commit rule on the host (after the copy);
* ``bookkeeping``: everything else of the step (plan, canvas, events, cache bookkeeping).

Also the KV cache's bytes per token (keys and values, every layer). Writes JSON stamped with the hardware.

    d3llm init llada-8b-instruct --out /tmp/llada8b
    python benchmarks/step_breakdown.py --model /tmp/llada8b --threads 1,2 --steps 3
    python benchmarks/step_breakdown.py --model teacher --steps 4          # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import d3llm
from d3llm.decoding import rules
from d3llm.decoding.engine import Engine
from d3llm.eval.environment import environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import settings  # noqa: E402 - the same settings as the decoding benchmark


class StepClock:
    """Wraps one engine's ``method.commit`` and ``rules.to_host`` to time the parts of each step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.marks: dict[str, float] = {}
        self.bytes = 0
        commit, self.original_to_host = engine.method.commit, rules.to_host

        def timed_commit(*args, **kwargs):
            self.marks["commit_start"] = time.perf_counter()
            try:
                return commit(*args, **kwargs)
            finally:
                self.marks["commit_end"] = time.perf_counter()

        def timed_to_host(*tensors):
            self.marks["copy_start"] = time.perf_counter()
            try:
                return self.original_to_host(*tensors)
            finally:
                self.marks["copy_end"] = time.perf_counter()
                self.bytes += sum(t.numel() * (4 if t.dtype == torch.bfloat16 else t.element_size()) for t in tensors)

        engine.method.commit = timed_commit
        rules.to_host = timed_to_host

    def close(self) -> None:
        rules.to_host = self.original_to_host

    def step(self) -> dict:
        """Run one engine step; its wall time and the parts (seconds), and the bytes copied to the host."""
        model0, self.marks, self.bytes = self.engine.stats.model_time, {}, 0
        start = time.perf_counter()
        self.engine.step()
        wall = time.perf_counter() - start
        m = self.marks
        forward = self.engine.stats.model_time - model0
        end = m.get("commit_end", 0.0)
        commit = end - m.get("commit_start", end)
        copy_start, copy_end = m.get("copy_start", end), m.get("copy_end", end)
        return {"wall": wall, "forward": forward, "scoring": copy_start - m.get("commit_start", end),
                "transfer": copy_end - copy_start, "host_commit": end - copy_end,
                "bookkeeping": wall - forward - commit, "bytes_to_host": self.bytes}


def measure(model, method: str, params: dict, prompt: list[int], gen: int, steps: int) -> dict:
    engine = Engine(model, method, max_new_tokens=gen, **params)
    engine.add_request(prompt)
    clock = StepClock(engine)
    try:
        first = clock.step()
        rows = []
        while engine.has_work and len(rows) < steps:
            row = clock.step()
            if row["forward"] > 0:  # a step that only retires finished rows is not a decoding step
                rows.append(row)
    finally:
        clock.close()
    keys = ("wall", "forward", "scoring", "transfer", "host_commit", "bookkeeping", "bytes_to_host")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys} if rows else {}
    return {"first_step_wall": first["wall"], "steps": len(rows), "mean": mean, "per_step": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="teacher")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (CPU)")
    parser.add_argument("--steps", type=int, default=3, help="steps measured after the first")
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens")
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--only", default=None, help="comma-separated setting names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "step_breakdown.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    model = d3llm.load_model(args.model, device=args.device, dtype=args.dtype)
    load_seconds = time.perf_counter() - start
    c = model.config
    kv_bytes = 2 * c.num_layers * c.num_kv_heads * c.head_dim * model.dtype.itemsize
    prompt = [(7 * i + 3) % (c.vocab_size - 8) for i in range(args.prompt)]
    table = settings(args.gen, args.block, threshold=0.5, confidence=0.9)
    names = args.only.split(",") if args.only else list(table)
    record = {"command": " ".join(["python", "benchmarks/step_breakdown.py", *sys.argv[1:]]),
              "environment": environment(), "model": args.model, "dtype": str(model.dtype),
              "parameters": model.num_parameters(), "load_seconds": load_seconds,
              "kv_cache_bytes_per_token": kv_bytes, "prompt": args.prompt, "gen": args.gen, "block": args.block,
              "results": {}}
    with torch.no_grad():  # page the weights in once, outside every measurement
        model(torch.tensor([prompt]))
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in names:
            method, params = table[name]
            params = dict(params, block_size=args.block)
            res = measure(model, method, params, prompt, args.gen, args.steps)
            record["results"][f"{name} @{threads}t"] = res
            m = res["mean"]
            print(f"{name:36s} {threads}t  step {m['wall']:.3f}s = forward {m['forward']:.3f} + scoring "
                  f"{m['scoring']:.4f} + transfer {m['transfer']:.5f} ({m['bytes_to_host']:.0f} B) + host "
                  f"{m['host_commit']:.4f} + bookkeeping {m['bookkeeping']:.4f}; first step "
                  f"{res['first_step_wall']:.2f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
