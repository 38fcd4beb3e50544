"""Distillation benchmark: the teacher against its pseudo-trajectory-distilled student (and ablation students) on
the accuracy-parallelism trade-off, scored with AUP (SPEC 9.1).

One run sweeps, on the same held-out problems at ``--gen`` new tokens:

* every model's one-token-per-forward point (``vanilla``, ``steps == gen``, blocks of 16): the first point of each
  of its curves, as every row of the reference's leaderboard files starts at TPF 1;
* the teacher: ``fast_dllm`` with the dual cache (confidence thresholds) and ``multi_block`` with and without the
  KV cache (entropy thresholds), each at blocks of 16, 24 and 48;
* the student: ``multi_block`` with and without the KV cache at blocks of 16, 24 and 48;
* each ablation student (``--ablation NAME=DIR``): ``multi_block`` without the cache at ``--ablation-blocks``.

AUP of a curve = ``d3llm.eval.aup`` over its model's one-token point plus its sweep points that lie within the
5-point floor (``within_floor``: points further down the sweep are not scored), with ``y_max`` the best accuracy of
any point in the run. Ablations are also compared at equal accuracy: the highest TPF each model reaches at an
accuracy of at least C, for several C. Prints every point and curve, writes JSON stamped with the hardware and
versions, and a PNG of accuracy against TPF.

    python benchmarks/distill.py --student d3llm/assets/arith-student --threads 2
    python benchmarks/distill.py --student runs/student --ablation random-mask=runs/abl-random --limit 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import d3llm
from d3llm.eval import aup, environment, evaluate, within_floor
from d3llm.eval.environment import record_path, write_record
from d3llm.tasks.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MB, NO_CACHE  # noqa: E402  (the multi_block settings of the speed benchmark)

CACHE = dict(cache_delay_iter=1, refresh_interval=None)
ENTROPIES = (0.02, 0.05, 0.1, 0.2, 0.5)
CONFIDENCES = (0.95, 0.9, 0.7, 0.5)
CONSTRAINTS = (99.0, 98.5, 98.0, 97.0, 95.0)


def curves(role: str, gen: int, blocks: list[int]) -> list[tuple[str, str, list[tuple[float, dict]]]]:
    """(curve name, method, [(threshold, params)]) for a model's role."""
    out = []
    for block in blocks:
        base = dict(max_new_tokens=gen, block_size=block)
        if role == "teacher":
            out.append((f"fast_dllm dual B{block}", "fast_dllm",
                        [(c, dict(base, steps=gen, threshold=c, cache="dual")) for c in CONFIDENCES]))
        caches = (("no cache", NO_CACHE), ("cache D1", CACHE)) if role in ("teacher", "student") else \
            (("no cache", NO_CACHE),)
        for label, cache in caches:
            out.append((f"multi_block B{block} {label}", "multi_block",
                        [(h, dict(base, **MB, **cache, threshold=h)) for h in ENTROPIES]))
    return out


def curve_aup(first: tuple[float, float], points: list[tuple[float, float]], y_max: float) -> float:
    return aup(within_floor([first, *points]), y_max)


def best_tpf_at(points: list[tuple[float, float]], floor: float) -> float | None:
    ok = [tpf for tpf, acc in points if acc >= floor]
    return max(ok) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="teacher folder (default: the shipped arith teacher)")
    ap.add_argument("--student", required=True, help="the distilled student folder")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=DIR", help="an ablation student")
    ap.add_argument("--ablation-blocks", default="24,48", help="blocks swept for ablation students")
    ap.add_argument("--limit", type=int, default=500, help="held-out problems per point")
    ap.add_argument("--gen", type=int, default=48)
    ap.add_argument("--blocks", default="16,24,48")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=record_path, default="benchmarks/results/distill.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.teacher is None:
        from d3llm.assets import default_model_path

        args.teacher = str(default_model_path())
    blocks = [int(b) for b in args.blocks.split(",")]
    models = [("teacher", "teacher", args.teacher), ("student", "student", args.student)]
    for spec in args.ablation:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--ablation expects NAME=DIR, got {spec!r}")
        models.append((name, "ablation", folder))
    dataset = load_dataset("arith:test")

    t0 = time.perf_counter()
    rows, env = [], None
    for name, role, folder in models:
        model, tok = d3llm.load_model(folder), d3llm.load_tokenizer(folder)
        env = env or environment(model)

        def run(label, method, params, threshold=None):
            r = evaluate(model, tok, dataset, method, params, batch_size=args.batch_size, limit=args.limit)
            row = {"model": name, "role": role, "folder": folder, "curve": label, "threshold": threshold,
                   **r.summary()}
            rows.append(row)
            print(f"{name:14s} {label:28s} {'' if threshold is None else threshold:>5}  exact {row['strict']:6.2f}%  "
                  f"TPF {row['tpf']:6.2f}  {row['tokens_per_s']:8.1f} tok/s", flush=True)

        run("one token per forward", "vanilla", dict(max_new_tokens=args.gen, block_size=16, steps=args.gen))
        sweep_blocks = blocks if role != "ablation" else [int(b) for b in args.ablation_blocks.split(",")]
        for label, method, points in curves(role, args.gen, sweep_blocks):
            for threshold, params in points:
                run(label, method, params, threshold)

    y_max = max(r["strict"] for r in rows)
    summary = {}
    print(f"\ny_max (best accuracy of any point) = {y_max:.2f}%\n")
    for name, role, _ in models:
        mine = [r for r in rows if r["model"] == name]
        first = next((r["tpf"], r["strict"]) for r in mine if r["curve"] == "one token per forward")
        per_curve = {}
        for label in dict.fromkeys(r["curve"] for r in mine if r["curve"] != "one token per forward"):
            pts = [(r["tpf"], r["strict"]) for r in mine if r["curve"] == label]
            per_curve[label] = {"aup": round(curve_aup(first, pts, y_max), 2), "points": pts,
                                "max_accuracy": max(acc for _, acc in pts)}
        best = max(per_curve, key=lambda k: per_curve[k]["aup"])
        all_pts = [(r["tpf"], r["strict"]) for r in mine if r["curve"] != "one token per forward"]
        summary[name] = {"role": role, "one_token_point": first, "curves": per_curve, "best_curve": best,
                         "best_aup": per_curve[best]["aup"],
                         "best_tpf_at_accuracy": {str(c): best_tpf_at(all_pts, c) for c in CONSTRAINTS}}
        print(f"{name}: one token per forward {first[1]:.2f}% at TPF {first[0]:.2f}")
        for label, c in per_curve.items():
            print(f"  {label:28s} AUP {c['aup']:8.1f}   max accuracy {c['max_accuracy']:6.2f}%")
        print(f"  best: {best} (AUP {per_curve[best]['aup']:.1f})")
    teacher, student = summary["teacher"], summary["student"]
    verdict = {"teacher_one_token_accuracy": teacher["one_token_point"][1],
               "student_best_curve": student["best_curve"],
               "student_best_curve_max_accuracy": student["curves"][student["best_curve"]]["max_accuracy"],
               "aup_ratio": round(student["best_aup"] / teacher["best_aup"], 3)}
    verdict["within_1_point"] = verdict["student_best_curve_max_accuracy"] >= verdict["teacher_one_token_accuracy"] - 1
    print(f"\nstudent best AUP / teacher best AUP = {verdict['aup_ratio']:.3f}; student's best curve reaches "
          f"{verdict['student_best_curve_max_accuracy']:.2f}% (teacher one token per forward "
          f"{verdict['teacher_one_token_accuracy']:.2f}%)")
    print("\nhighest TPF at accuracy >= C:")
    print(f"  {'model':14s} " + " ".join(f"{c:>7}" for c in CONSTRAINTS))
    for name, s in summary.items():
        print(f"  {name:14s} " + " ".join(f"{'-' if v is None else f'{v:.2f}':>7}"
                                           for v in s["best_tpf_at_accuracy"].values()))

    payload = {"command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
               "limit": args.limit, "gen": args.gen, "y_max": y_max, "elapsed_s": round(time.perf_counter() - t0, 1),
               "verdict": verdict, "summary": summary, "points": rows, "environment": env}
    out = write_record(args.out, payload)
    print(f"wrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in summary.items():
        for label, c in s["curves"].items():
            if s["role"] == "ablation" and label != s["best_curve"]:
                continue
            pts = sorted([tuple(s["one_token_point"]), *map(tuple, c["points"])])
            best = label == s["best_curve"]
            ax.plot(*zip(*pts), marker="o", ms=3, lw=2 if best else 0.8, alpha=1 if best else 0.45,
                    label=f"{name}: {label} (AUP {c['aup']:.0f})" if best or s["role"] != "ablation" else None)
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(max(0, y_max - 25), 100.5)
    ax.set_title(f"arith, {args.limit} held-out problems, {args.gen} new tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=130)
    print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
