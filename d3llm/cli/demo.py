"""``d3llm demo``: a self-contained tour on a tiny model: build, save in the public layout, reload, cached forward."""

from __future__ import annotations

import argparse
import tempfile
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the built-in demo", description=__doc__)
    p.add_argument("--family", choices=["llada", "dream"], default="llada")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import d3llm

    model = d3llm.build_model(f"{args.family}-tiny", seed=0)
    print(f"built a random {model.config.describe()} ({model.num_parameters():,} parameters)")
    ids = torch.randint(0, model.config.vocab_size - 2, (2, 48))
    with tempfile.TemporaryDirectory() as folder:
        d3llm.save_model(model, folder)
        loaded = d3llm.load_model(folder, device="cpu")
        with torch.no_grad():
            t0 = time.perf_counter()
            full = loaded(ids, use_cache=True)
            t1 = time.perf_counter()
            cache = full.cache.truncate(32)
            sliced = loaded(ids[:, 32:], cache=cache, append=0)
            t2 = time.perf_counter()
    offset = 1 if model.family == "dream" else 0
    diff = (sliced.logits[:, offset:] - full.logits[:, 32 + offset:]).abs().max().item()
    print(f"saved and reloaded it from a config.json + model.safetensors folder")
    print(f"full forward over 2 x 48 positions: {1e3 * (t1 - t0):.1f} ms")
    print(f"cached forward over the last 16 positions: {1e3 * (t2 - t1):.1f} ms, max |logit diff| = {diff:.2e}")
    return 0
