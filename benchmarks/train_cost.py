"""What the robust-models recipe costs in training: the canvas mix and multi-turn conversations against the earlier
fixed recipe (one canvas of 48 new tokens, single questions), same model, batch and machine, in one run.

Recipes (``d3llm train`` options on ``llada-small``, or ``llama-small`` for the causal one):

* ``fixed 48`` — ``--response-length 48 --turns 1`` (the earlier recipe);
* ``mix`` — the defaults: canvases drawn per step from 32-256 (mean 112), 1-4 questions per conversation;
* ``mix unbucketed`` — the same lengths drawn per *row* and padded to the longest row of the batch (what a step
  would cost without bucketing, :class:`UnbucketedObjective`);
* ``causal fixed`` / ``causal mix`` — the AR baseline's objective on single questions and on conversations.

Each recipe trains ``--steps`` steps from scratch, ``--repeats`` times, alternately (so drifts of the machine's load
hit every recipe alike); reported: the best seconds per step, real tokens per second (prompt and canvas tokens the
model attends to) and positions per second (every column of the padded batch).

    python benchmarks/train_cost.py --threads 1 --steps 20 --out benchmarks/results/train_cost.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from d3llm.eval.environment import environment, record_path, write_record
from d3llm.training.config import TrainConfig
from d3llm.training.sft import MaskedDiffusionObjective

RECIPES = {
    "fixed 48": dict(response_length=48, turns="1"),
    "mix": dict(),
    "mix unbucketed": dict(unbucketed=True),
    "causal fixed": dict(objective="causal", model="llama-small", response_length=48, turns="1"),
    "causal mix": dict(objective="causal", model="llama-small"),
}


class UnbucketedObjective(MaskedDiffusionObjective):
    """The mix with each row's canvas drawn on its own (no bucket): a batch is as wide as its longest row."""

    def batch(self, step, rank, world_size, device):
        gen = torch.Generator().manual_seed(step)
        local = self.cfg.batch_size // world_size
        first = step * self.cfg.batch_size + rank * local
        drawn, turns = self.bucket(step)
        examples = [self.dataset.example(self.stream.index(g), turns) for g in range(first, first + local)]
        batch = self.encoder.collate([self.encode(e, self.canvas.draw(gen)) for e in examples]).to(device)
        t = torch.rand(local, generator=gen)
        u = torch.rand(local, batch.response_length, generator=gen)
        from d3llm.training.sft import SFTBatch

        return SFTBatch(batch, t, u)


def run_recipe(name: str, steps: int, batch_size: int, threads: int, folder: Path) -> dict:
    from d3llm.training.trainer import train

    options = dict(RECIPES[name])
    plain = options.pop("unbucketed", False)
    options.setdefault("model", "llada-small")
    cfg = TrainConfig(out=str(folder / name.replace(" ", "_")), steps=steps, batch_size=batch_size,
                      warmup_steps=1, eval_every=10**6, save_every=10**6, log_every=steps, eval_size=1,
                      threads=threads, progress=False, **options)
    positions = {"n": 0}
    obj_class = UnbucketedObjective if plain else None
    if cfg.objective == "causal":
        from d3llm.training.causal import CausalLMObjective

        obj_class = CausalLMObjective
    objective = (obj_class or MaskedDiffusionObjective)(cfg)
    inner = objective.batch

    def counting(step, rank, world_size, device):
        out = inner(step, rank, world_size, device)
        positions["n"] += out.batch.input_ids.numel()
        return out

    objective.batch = counting
    t0 = time.perf_counter()
    train(cfg, objective)
    wall = time.perf_counter() - t0
    import json

    log = [json.loads(line) for line in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    last = [e for e in log if "elapsed_s" in e][-1]  # one log line for the whole run (log_every = steps)
    train_s = last["elapsed_s"]
    tokens = last["tokens_per_s"] * train_s
    return {"recipe": name, "steps": steps, "batch_size": batch_size, "wall_s": round(wall, 2),
            "s_per_step": round(train_s / steps, 4), "tokens_per_s": round(tokens / train_s, 1),
            "positions_per_s": round(positions["n"] / train_s, 1), "tokens_per_step": round(tokens / steps, 1),
            "positions_per_step": round(positions["n"] / steps, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="steps per run (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="global batch (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per recipe, alternating (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated (default: all)")
    ap.add_argument("--out", type=record_path, default=None, help="write the JSON record here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in names:
                r = run_recipe(name, args.steps, args.batch_size, args.threads, Path(tmp) / str(rep))
                runs[name].append(r)
                print(f"{name:16s} run {rep + 1}: {r['s_per_step']:.3f} s/step  {r['tokens_per_s']:,.0f} tokens/s  "
                      f"{r['positions_per_s']:,.0f} positions/s  {r['tokens_per_step']:,.0f} tokens/step", flush=True)
    best = {n: min(rs, key=lambda r: r["s_per_step"]) for n, rs in runs.items()}
    base = best.get("fixed 48")
    print("\nbest of each (s/step relative to fixed 48):")
    for n, r in best.items():
        rel = f"  {r['s_per_step'] / base['s_per_step']:.2f}x" if base else ""
        print(f"{n:16s} {r['s_per_step']:.3f} s/step{rel}  {r['tokens_per_s']:,.0f} tokens/s  "
              f"{r['positions_per_s']:,.0f} positions/s")
    if args.out:
        write_record(args.out, {"benchmark": "train_cost", "command": " ".join(["python", *sys.argv]),
                                "environment": environment(), "runs": runs, "best": best})
    return 0


if __name__ == "__main__":
    sys.exit(main())
