"""Do the shipped models work outside one training setup? Accuracy on held-out problems when only the length or the
conversation changes, in one run.

For each model folder (default: the shipped teacher, student and AR baseline), with the folder's own decoding
defaults (``generation_config.json``) and only the number of new tokens changed:

* ``multi_block`` (the dLLMs' default) at ``max_new_tokens`` 48, 64, 128 and 256 (the canvas rounded up to whole
  blocks of the folder's block size, as ``d3llm serve`` does with ``max_tokens``: the student's blocks of 48 decode
  64 as 96); ``vanilla`` (one token per
  forward, blocks of 16... as the folder's ``block_size``) at 48 and 256 for the teacher;
* the AR baseline's ``autoregressive`` decoder capped at 64 and 256;
* ``turns=2``: every held-out question after one earlier question/answer turn of chat (the same last questions);
* ``steps=1``: the one-step held-out questions (every distinct one, 388 with the default seed).

Each cell is strict exact match (``#### N``) on ``--limit`` held-out problems (default 500), with TPF and tokens/s.
A result row also says whether it meets the robust-models acceptance line (teacher and AR >= 97%, vanilla >= 98%,
student >= 96%, two-turn >= 95%, one-step >= 97%).

    python benchmarks/robust.py --threads 1 --out benchmarks/results/robust.json
    python benchmarks/robust.py --models teacher --limit 100 --lengths 48,256
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import d3llm
from d3llm.assets import AR, STUDENT, TEACHER
from d3llm.eval.environment import environment, record_path, write_record
from d3llm.eval.runner import evaluate
from d3llm.tasks.data import load_dataset

MODELS = {"teacher": TEACHER, "student": STUDENT, "ar": AR}
#: the acceptance line of each kind of row (strict exact match, %)
FLOORS = {"teacher": 97.0, "student": 96.0, "ar": 97.0, "vanilla": 98.0, "turns=2": 95.0, "steps=1": 97.0}


def canvas(model, n: int) -> int:
    """The canvas a request for ``n`` new tokens decodes with the folder's default decoder: ``n`` rounded up to
    whole blocks of the folder's ``block_size`` (as ``d3llm serve`` does for ``max_tokens``; a causal model: ``n``).
    Every arith answer fits in 48 tokens, so the cut at ``n`` that the server applies never changes a score here."""
    block = (model.generation_config.values.get("block_size") if model.generation_config is not None else None)
    if getattr(model, "causal", False) or not block:
        return n
    return -(-n // block) * block


def cells(name: str, model, lengths: list[int], vanilla_lengths: list[int], ar_lengths: list[int]):
    """(label, dataset spec, method, params, floor) of every cell a model is measured on."""
    causal = getattr(model, "causal", False)
    method = None  # the folder's default decoder
    own = ar_lengths if causal else lengths
    out = [(f"{'autoregressive' if causal else 'default'} {n}", "arith:test", method,
            {"max_new_tokens": canvas(model, n)}, FLOORS[name]) for n in own]
    if name == "teacher":
        out += [(f"vanilla {n}", "arith:test", "vanilla", {"max_new_tokens": n, "steps": n}, FLOORS["vanilla"])
                for n in vanilla_lengths]
    first = own[0]
    out += [(f"two turns {first}", "arith:test:turns=2", method, {"max_new_tokens": canvas(model, first)},
             FLOORS["turns=2"]),
            (f"one step {first}", "arith:test:steps=1", method, {"max_new_tokens": canvas(model, first)},
             FLOORS["steps=1"])]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="teacher,student,ar",
                    help="comma-separated: teacher, student, ar, or model folders (default: %(default)s)")
    ap.add_argument("--lengths", default="48,64,128,256", help="dLLM max_new_tokens (default: %(default)s)")
    ap.add_argument("--vanilla-lengths", default="48,256", help="teacher vanilla lengths (default: %(default)s)")
    ap.add_argument("--ar-lengths", default="64,256", help="AR caps (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=500, help="held-out problems per cell (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=50, help="prompts decoded together (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=record_path, default=None, help="write the JSON record here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ints = {k: [int(v) for v in getattr(args, k).split(",") if v.strip()]
            for k in ("lengths", "vanilla_lengths", "ar_lengths")}
    rows, t0 = [], time.perf_counter()
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        folder = MODELS.get(spec, spec)
        name = spec if spec in MODELS else ("ar" if "ar" in str(folder).rsplit("/", 1)[-1] else "teacher")
        model = d3llm.load_model(folder)
        tokenizer = d3llm.load_tokenizer(folder)
        for label, task, method, params, floor in cells(name, model, ints["lengths"], ints["vanilla_lengths"],
                                                        ints["ar_lengths"]):
            data = load_dataset(task, "test", scored=True)
            r = evaluate(model, tokenizer, data, method, params, batch_size=args.batch_size, limit=args.limit)
            row = {"model": spec, "folder": str(folder), "cell": label, "task": data.name, "method": r.method,
                   "params": r.params, "n": r.n, "strict": round(r.strict, 2), "flexible": round(r.flexible, 2),
                   "tpf": round(r.tpf, 3), "tokens_per_s": round(r.tokens_per_s, 1), "wall_s": round(r.wall_s, 2),
                   "floor": floor, "meets": r.strict >= floor}
            rows.append(row)
            print(f"{spec:8s} {label:18s} {data.name:20s} n={r.n:3d}  strict {r.strict:6.2f}%  TPF {r.tpf:5.2f}  "
                  f"{r.tokens_per_s:7.1f} tok/s  {'ok' if row['meets'] else 'BELOW ' + str(floor)}", flush=True)
        del model
    failed = [f"{r['model']} {r['cell']}" for r in rows if not r["meets"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} cells meet their line" + (f"; below: {', '.join(failed)}"
                                                                              if failed else ""))
    if args.out:
        write_record(args.out, {"benchmark": "robust", "command": " ".join(["python", *sys.argv]),
                                "environment": environment(), "limit": args.limit, "batch_size": args.batch_size,
                                "wall_s": round(time.perf_counter() - t0, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
