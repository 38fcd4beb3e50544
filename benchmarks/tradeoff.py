"""Accuracy-parallelism trade-off of a model on a task: exact match against tokens per forward (TPF).

Runs ``vanilla`` decoding at one token per forward (the reference point), then sweeps the threshold of the parallel
decoders (``fast_dllm``: confidence; ``multi_block``: entropy, and ``block_entropy``), each point over the same
held-out problems. Prints a table, writes JSON stamped with hardware and versions and, when matplotlib is installed,
a plot of accuracy against TPF.

    python benchmarks/tradeoff.py                                   # the shipped teacher, 500 arith test problems
    python benchmarks/tradeoff.py --model DIR --limit 200 --out runs/tradeoff.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import d3llm
from d3llm.eval.environment import environment, record_path, write_record
from d3llm.eval.runner import evaluate
from d3llm.tasks.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MB  # noqa: E402  (the multi_block settings of the speed benchmark)
CONFIDENCES = (0.95, 0.9, 0.7, 0.5, 0.3, 0.1)
ENTROPIES = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)


def sweep(gen: int, block: int) -> list[tuple[str, str, dict]]:
    """(label, method, params) of every point, the vanilla reference first."""
    base = dict(max_new_tokens=gen, block_size=block)
    points = [("vanilla (1 token/forward)", "vanilla", dict(base, steps=gen))]
    points += [(f"fast_dllm conf>={c}", "fast_dllm", dict(base, steps=gen, threshold=c)) for c in CONFIDENCES]
    points += [(f"block_entropy H<={h}", "block_entropy", dict(base, steps=gen, threshold=h)) for h in ENTROPIES]
    points += [(f"multi_block H<={h}", "multi_block", dict(base, **MB, threshold=h)) for h in ENTROPIES]
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder with its tokenizer (default: the shipped teacher)")
    ap.add_argument("--task", default="arith", help="'arith' (test split) or a JSONL file")
    ap.add_argument("--limit", type=int, default=500, help="problems per point")
    ap.add_argument("--gen", type=int, default=48, help="max_new_tokens (a multiple of --block)")
    ap.add_argument("--block", type=int, default=16, help="block size of every decoder")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=record_path, default="benchmarks/results/tradeoff.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model is None:
        from d3llm.assets import default_model_path

        args.model = str(default_model_path())
    model = d3llm.load_model(args.model)
    tokenizer = d3llm.load_tokenizer(args.model)
    dataset = load_dataset(args.task, default_split="test", scored=True)

    rows = []
    t0 = time.perf_counter()
    for label, method, params in sweep(args.gen, args.block):
        r = evaluate(model, tokenizer, dataset, method, params, batch_size=args.batch_size, limit=args.limit)
        row = {"label": label, **r.summary()}
        rows.append(row)
        print(f"{label:28s} exact {row['strict']:6.2f}%  flexible {row['flexible']:6.2f}%  TPF {row['tpf']:5.2f}  "
              f"{row['tokens_per_s']:8.1f} tok/s", flush=True)
    reference = rows[0]["strict"]
    print(f"\nvanilla exact match {reference:.2f}%; at TPF >= 3:")
    for row in rows[1:]:
        if row["tpf"] >= 3:
            print(f"  {row['label']:28s} TPF {row['tpf']:5.2f}  exact {row['strict']:6.2f}%  "
                  f"({row['strict'] - reference:+.2f} points)")

    payload = {"model": args.model, "task": args.task, "limit": args.limit, "gen": args.gen, "block": args.block,
               "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
               "elapsed_s": round(time.perf_counter() - t0, 1), "points": rows, "environment": environment(model)}
    out = write_record(args.out, payload)
    print(f"wrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("fast_dllm", "block_entropy", "multi_block"):
        pts = sorted((r["tpf"], r["strict"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*pts), marker="o", label=method)
    ax.scatter([rows[0]["tpf"]], [reference], color="black", zorder=3, label="vanilla")
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("exact match (%)")
    ax.set_title(f"{Path(args.model).name} on {args.task} ({args.limit} problems)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
