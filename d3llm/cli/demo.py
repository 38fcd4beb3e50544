"""d3llm demo: the shipped teacher solving held-out problems of the built-in task, decoded one token per forward
and with d3LLM's multi-block decoder (the teacher's own decoding defaults), with the figures that matter (NFE,
tokens per forward, tokens/s).

--random instead tours the model code on a random tiny model: build, save in the public checkpoint layout,
reload, and check a KV-cached forward against a full one.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.cli.options import add_parser, add_threads_flag

    p = add_parser(sub, "demo", "run the built-in demo", __doc__)
    p.add_argument("--problems", type=int, default=3, help="held-out problems to solve (default: 3)")
    p.add_argument("--random", action="store_true", help="tour the model code on a random tiny model instead")
    p.add_argument("--family", choices=["llada", "dream"], default="llada",
                   help="family of the --random model (default: llada)")
    add_threads_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.problems <= 0:
        from d3llm.errors import ConfigError

        raise ConfigError(f"--problems must be positive, got {args.problems}")
    return random_tour(args.family, args.threads) if args.random else teacher_demo(args.problems, args.threads)


def teacher_demo(n: int, threads: int | None = None) -> int:
    import d3llm
    from d3llm.assets import default_model_path
    from d3llm.cli.options import apply_threads
    from d3llm.models.prompts import encode_prompt
    from d3llm.tasks import load_dataset
    from d3llm.tasks.scoring import is_correct

    folder = default_model_path()
    model = d3llm.load_model(folder)
    apply_threads(threads, model)
    tokenizer = d3llm.load_tokenizer(folder)
    print(f"the shipped teacher: {model.config.describe()} ({model.num_parameters():,} parameters), {folder}")
    test = load_dataset("arith:test", size=n)
    prompts = [encode_prompt(tokenizer, test[i].question) for i in range(n)]
    mb = model.generation_config.defaults_for("multi_block")
    settings = [
        ("vanilla, one token per forward", "vanilla"),
        (f"d3LLM multi-block, entropy <= {mb['threshold']}, KV cache delay {mb['cache_delay_iter']}", "multi_block"),
    ]
    results = [(label, d3llm.generate(model, prompts, method)) for label, method in settings]
    for i in range(n):
        print(f"\nQ: {test[i].question}")
        for label, r in results:
            text = r.texts(tokenizer)[i]
            mark = "correct" if is_correct(text, test[i].gold) else f"wrong (gold {test[i].gold})"
            nfe = int(r.nfe[i])
            print(f"  [{label}] {nfe} forwards, {len(r.tokens[i]) / nfe:.2f} tokens/forward, {mark}")
            print("    " + text.replace("\n", "\n    "))
    print()
    for label, r in results:
        print(f"{label}: TPF {r.tokens_per_forward:.2f}, {r.tokens_per_second:.0f} tokens/s")
    return 0


def random_tour(family: str, threads: int | None = None) -> int:
    import torch

    import d3llm
    from d3llm.cli.options import apply_threads

    model = d3llm.build_model(f"{family}-tiny", seed=0)
    apply_threads(threads, model)
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
    print("saved and reloaded it from a config.json + model.safetensors folder")
    print(f"full forward over 2 x 48 positions: {1e3 * (t1 - t0):.1f} ms")
    print(f"cached forward over the last 16 positions: {1e3 * (t2 - t1):.1f} ms, max |logit diff| = {diff:.2e}")
    return 0
