"""Decoding benchmark: wall time of every decoder split into model forward time and the decoder's own cost.

For each method (with and without a KV cache) at batch 1 and batch 8 it reports NFE, TPF (generated tokens before
EOS per forward), tokens/s, wall time, model time and the loop's share ``(wall - model) / wall``, prints a table
and writes JSON stamped with the hardware and software versions.

    python benchmarks/decode.py                          # the shipped teacher (or a random llada-small)
    python benchmarks/decode.py --model DIR --device cuda --dtype bfloat16 --gen 256 --block 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import d3llm
from d3llm.eval.environment import environment
from d3llm.models.checkpoint import atomic_write_text

MB = dict(block_add_threshold=0.1, decoded_token_threshold=0.95, early_stop=True)


def settings(gen: int, block: int, threshold: float, confidence: float) -> dict[str, tuple[str, dict]]:
    return {
        "vanilla": ("vanilla", dict(steps=gen)),
        "block_entropy": ("block_entropy", dict(steps=gen, threshold=threshold)),
        "fast_dllm": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="none")),
        "fast_dllm+prefix": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="prefix")),
        "fast_dllm+dual": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="dual")),
        "multi_block": ("multi_block", dict(MB, threshold=threshold)),
        "multi_block+cache(D=1)": ("multi_block", dict(MB, threshold=threshold, cache_delay_iter=1)),
        "multi_block+cache(D=2,R=3)": ("multi_block", dict(MB, threshold=threshold, cache_delay_iter=2,
                                                            refresh_interval=3)),
    }


def load(args):
    if args.model:
        return d3llm.load_model(args.model, device=args.device, dtype=args.dtype), args.model
    try:
        from d3llm.assets import default_model_path

        path = default_model_path()
        return d3llm.load_model(path, device=args.device, dtype=args.dtype), str(path)
    except d3llm.D3LLMError:
        model = d3llm.build_model("llada-small", seed=0, device=args.device or "cpu", dtype=args.dtype)
        return model, "random llada-small"


def make_prompts(model, source: str, n: int, length: int, seed: int) -> tuple[list[list[int]], str]:
    """Chat-templated prompts of the built-in task's test split when the model folder has a tokenizer, else random
    ids of ``length``. Returns the prompts and a description of where they came from."""
    from pathlib import Path

    if Path(source).is_dir() and (Path(source) / "tokenizer.json").is_file():
        from d3llm.tasks.data import ArithDataset
        from d3llm.models.prompts import encode_prompt

        tokenizer = d3llm.load_tokenizer(source)
        data = ArithDataset("test", size=n, seed=seed)
        prompts = [encode_prompt(tokenizer, ex.question) for ex in data]
        return prompts, f"arith:test[:{n}] with the chat template"
    g = torch.Generator().manual_seed(seed)
    hi = min(model.config.vocab_size, model.config.mask_token_id or model.config.vocab_size) - 1
    return [torch.randint(0, hi, (length,), generator=g).tolist() for _ in range(n)], f"{n} random prompts of {length}"


def measure(model, prompts, method, params, batch: int, repeats: int) -> dict:
    """Decode ``prompts`` in batches; the first batch is a warm-up and not counted."""
    d3llm.generate(model, prompts[:batch], method, **params)  # warm-up
    wall = model_t = 0.0
    nfe = tokens = forwards = 0
    for _ in range(repeats):
        for i in range(0, len(prompts) - batch + 1, batch):
            r = d3llm.generate(model, prompts[i : i + batch], method, **params)
            wall += r.wall_time
            model_t += r.model_time
            nfe += int(r.nfe.sum())
            forwards += int(r.nfe.max())
            tokens += int(r.num_tokens.sum())
    return {"method": method, "batch": batch, "nfe": nfe, "forwards": forwards, "tokens": tokens,
            "tpf": tokens / nfe, "tokens_per_s": tokens / wall, "wall_s": wall, "model_s": model_t,
            "loop_s": wall - model_t, "loop_share": (wall - model_t) / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: shipped teacher, else random llada-small)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--gen", type=int, default=64, help="max_new_tokens")
    ap.add_argument("--block", type=int, default=32, help="block_size")
    ap.add_argument("--threshold", type=float, default=0.5, help="entropy threshold (multi_block, block_entropy)")
    ap.add_argument("--confidence", type=float, default=0.9, help="confidence threshold (fast_dllm)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per batch size")
    ap.add_argument("--prompt-len", type=int, default=48, help="length of random prompts")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--methods", default=None, help="semicolon-separated subset of the setting names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, source = load(args)
    prompts, prompt_source = make_prompts(model, source, args.prompts, args.prompt_len, seed=0)
    print(f"model: {source} ({model.config.describe()}); prompts: {prompt_source}; threads {torch.get_num_threads()}")
    table = settings(args.gen, args.block, args.threshold, args.confidence)
    names = args.methods.split(";") if args.methods else list(table)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for name in names:
            method, params = table[name]
            params = dict(params, max_new_tokens=args.gen, block_size=args.block)
            row = measure(model, prompts, method, params, batch, args.repeats)
            row["setting"] = name
            rows.append(row)
            print(f"{name:28s} batch {batch:2d}  NFE {row['nfe']:5d}  TPF {row['tpf']:5.2f}  "
                  f"{row['tokens_per_s']:8.1f} tok/s  wall {row['wall_s']:7.3f}s  model {row['model_s']:7.3f}s  "
                  f"loop {100 * row['loop_share']:5.1f}%", flush=True)
    record = {"model_source": source, "prompts": prompt_source, "argv": sys.argv[1:], "environment": environment(model),
              "settings": {k: table[k] for k in names}, "results": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
