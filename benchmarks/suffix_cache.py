"""Suffix-cache benchmark: what ``multi_block`` with ``suffix_cache=True`` saves against the cached ``multi_block``
it extends, at the same thresholds, on the shipped teacher and student.

For every model and canvas length (``--lengths``, rounded up to whole blocks of the model's block size):

* **accuracy, TPF and positions forwarded per generated token** on ``--limit`` held-out problems, for the cached
  decoder (``cache_delay_iter=2, refresh_interval=3``: the teacher's folder defaults, also used for the student,
  whose folder decodes without a cache) and the suffix-cached one at every ``--intervals`` value of
  ``suffix_refresh_interval`` (``none``: the tail is computed once): the trade-off between the tail's staleness
  and its cost. Decoded in batches of ``--batch-size`` (a row decodes as it does alone);
* **tokens/s at every ``--batches`` size** on the first ``--speed-limit`` problems, cached, suffix-cached (the
  default interval) and lean (no periodic refresh of prefix or tail), one after the other in the same run, with
  the ratios measured there;
* **AUP** at ``--curve-length`` new tokens of each model's curve over the entropy thresholds ``--thresholds``, for
  the same three settings as the tokens/s (the model's one-token-per-forward point first, as in benchmarks/distill.py; ``y_max`` the best accuracy of the run),
  and a plot of those curves' accuracy against positions forwarded per token.

Prints each figure as it is measured and a markdown summary; writes JSON stamped with hardware and versions.

    python benchmarks/suffix_cache.py --threads 1
    python benchmarks/suffix_cache.py --limit 100 --speed-limit 32 --batches 1,8 --lengths 128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import d3llm
from d3llm.decoding.methods.multi_block import SUFFIX_REFRESH_INTERVAL
from d3llm.eval import aup, environment, evaluate, within_floor
from d3llm.eval.environment import record_path, write_record
from d3llm.models.generation_config import GenerationConfig
from d3llm.models.prompts import encode_prompt
from d3llm.tasks.data import load_dataset

CACHE = dict(cache_delay_iter=2, refresh_interval=3)  # the shipped teacher's cache settings
LEAN = dict(suffix_cache=True, suffix_refresh_interval=None, refresh_interval=None)  # the cheapest accuracy-keeping
SPEED = (("cached", {}), ("suffix", dict(suffix_cache=True)), ("suffix lean", LEAN))  # tokens/s and AUP curves


def settings(intervals: list[int | None]) -> list[tuple[str, dict]]:
    """The accuracy table's rows: the cached decoder (with and without its periodic refresh), the suffix cache at
    every tail refresh interval, and the lean settings (no periodic refresh; then no refresh while a block waits)."""
    rows = [("cached", {}), ("cached, no periodic refresh", dict(refresh_interval=None))]
    rows += [(f"suffix, tail {'never' if r is None else f'every {r}'}",
              dict(suffix_cache=True, suffix_refresh_interval=r)) for r in intervals]
    return rows + [("suffix lean", LEAN),
                   ("suffix lean, no refresh while waiting", dict(LEAN, refresh_while_waiting=False))]


def interval(text: str) -> int | None:
    return None if text == "none" else int(text)


def canvas(block: int, n: int) -> int:
    return -(-n // block) * block


def throughput(model, prompts: list[list[int]], params: dict, batch: int) -> dict:
    """tokens/s of ``prompts`` decoded in batches of ``batch`` (one untimed warm-up batch first)."""
    d3llm.generate(model, prompts[:batch], "multi_block", **params)
    wall = tokens = positions = 0
    for i in range(0, len(prompts) - batch + 1, batch):
        r = d3llm.generate(model, prompts[i: i + batch], "multi_block", **params)
        wall, tokens, positions = wall + r.wall_time, tokens + int(r.num_tokens.sum()), positions + int(r.positions.sum())
    return {"batch": batch, "tokens_per_s": tokens / wall, "positions_per_token": positions / max(tokens, 1)}


def plot(curves: list[dict], out) -> None:
    """Accuracy against positions forwarded per token, one panel per model, one curve per cache setting (when
    matplotlib is installed): ``out`` with the suffix ``.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = sorted({r["model"] for r in curves})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for label, _ in SPEED:
            pts = sorted((r["positions_per_token"], r["strict"]) for r in curves
                         if r["model"] == model and r["setting"] == f"curve {label}")
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(title=model, xlabel="positions forwarded per generated token", ylabel="exact match (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="teacher,student", help="model names or folders, comma-separated")
    ap.add_argument("--lengths", default="48,128", help="new tokens (rounded up to whole blocks)")
    ap.add_argument("--limit", type=int, default=500, help="held-out problems for accuracy and positions")
    ap.add_argument("--intervals", default="1,2,4,8,none", help="suffix_refresh_interval values of the trade-off")
    ap.add_argument("--speed-limit", type=int, default=64, help="problems for tokens/s")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes for tokens/s")
    ap.add_argument("--thresholds", default="0.05,0.1,0.2,0.5,1.0", help="entropy thresholds of the AUP curves")
    ap.add_argument("--curve-length", type=int, default=128, help="new tokens of the AUP curves")
    ap.add_argument("--batch-size", type=int, default=32, help="batch of the accuracy runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=record_path, default="benchmarks/results/suffix_cache.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    intervals = [interval(t) for t in args.intervals.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    thresholds = [float(h) for h in args.thresholds.split(",")]
    dataset = load_dataset("arith:test")
    t0 = time.perf_counter()
    accuracy, speed, curves, env = [], [], [], None
    for name in args.models.split(","):
        model, tokenizer = d3llm.load_model(name), d3llm.load_tokenizer(name)
        env = env or environment(model)
        folder = GenerationConfig.load(name).values
        block, threshold = folder.get("block_size", 32), folder.get("threshold", 0.5)
        prompts = [encode_prompt(tokenizer, dataset[i].question) for i in range(args.speed_limit)]

        def run(params: dict, label: str, table: list, method: str = "multi_block", **extra) -> dict:
            r = evaluate(model, tokenizer, dataset, method, params, batch_size=args.batch_size,
                         limit=args.limit, progress=False)
            row = {"model": name, "setting": label, **extra, **r.summary()}
            table.append(row)
            print(f"{name:8s} {label:26s} {extra}  exact {row['strict']:6.2f}%  TPF {row['tpf']:6.2f}  "
                  f"positions/token {row['positions_per_token']:6.2f}", flush=True)
            return row

        for n in lengths:
            gen = canvas(block, n)
            base = dict(max_new_tokens=gen, block_size=block, threshold=threshold, **CACHE)
            for label, extra in settings(intervals):
                run(dict(base, **extra), label, accuracy, new_tokens=gen)
            for b in batches:
                for label, extra in SPEED:
                    row = {"model": name, "new_tokens": gen, "setting": label,
                           **throughput(model, prompts, dict(base, **extra), b)}
                    speed.append(row)
                    print(f"{name:8s} {gen:4d} {label:12s} batch {b:3d}  {row['tokens_per_s']:8.1f} tokens/s", flush=True)
        gen = canvas(block, args.curve_length)
        one = run(dict(max_new_tokens=gen, block_size=block, steps=gen), "one token per forward", curves,
                  method="vanilla", new_tokens=gen)
        for label, extra in SPEED:
            for h in thresholds:
                params = dict(dict(max_new_tokens=gen, block_size=block, threshold=h, **CACHE), **extra)
                row = run(params, f"curve {label}", curves, new_tokens=gen, threshold=h)
                row["one_token"] = (one["tpf"], one["strict"])

    y_max = max(r["strict"] for r in accuracy + curves)
    aups = {}
    for row in curves:
        if "threshold" in row:
            aups.setdefault((row["model"], row["setting"]), [row["one_token"]]).append((row["tpf"], row["strict"]))
    aup_rows = [{"model": m, "curve": c, "aup": aup(within_floor(points), y_max)} for (m, c), points in aups.items()]
    lines = ["| model | new tokens | setting | exact | TPF | positions/token | vs cached |", "|---|---|---|---|---|---|---|"]
    for row in accuracy:
        ref = next(r for r in accuracy if r["model"] == row["model"] and r["new_tokens"] == row["new_tokens"]
                   and r["setting"] == "cached")
        lines.append(f"| {row['model']} | {row['new_tokens']} | {row['setting']} | {row['strict']:.1f}% | "
                     f"{row['tpf']:.2f} | {row['positions_per_token']:.1f} | "
                     f"{ref['positions_per_token'] / row['positions_per_token']:.2f}x fewer |")
    lines += ["", "| model | new tokens | batch | setting | tokens/s | vs cached | vs its batch 1 |",
              "|---|---|---|---|---|---|---|"]
    for row in speed:
        def same(**key):
            return next(r for r in speed if all(r[k] == row[k] for k in ("model", "new_tokens", "batch", "setting")
                                                 if k not in key) and all(r[k] == v for k, v in key.items()))
        cached, single = same(setting="cached"), same(batch=batches[0])
        lines.append(f"| {row['model']} | {row['new_tokens']} | {row['batch']} | {row['setting']} | "
                     f"{row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / cached['tokens_per_s']:.2f}x | "
                     f"{row['tokens_per_s'] / single['tokens_per_s']:.2f}x |")
    lines += ["", "| model | curve | AUP |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['curve']} | {r['aup']:.1f} |" for r in aup_rows]
    print("\n" + "\n".join(lines))
    plot(curves, args.out)
    print(f"\nsuffix_refresh_interval default {SUFFIX_REFRESH_INTERVAL}; {time.perf_counter() - t0:.0f} s")
    write_record(args.out, {"argv": vars(args), "environment": env, "accuracy": accuracy, "speed": speed,
                            "curves": curves, "aup": aup_rows, "y_max": y_max, "markdown": "\n".join(lines),
                            "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
