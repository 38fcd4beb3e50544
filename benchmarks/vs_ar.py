"""Diffusion decoding against autoregressive decoding, side by side, on the same held-out prompts in one run.

Models (same size, same data): the shipped AR baseline (``d3llm/assets/arith-ar``, a causal Llama), the shipped
teacher (``arith-teacher``, LLaDA) and, when it exists, the distilled student (``arith-student``). Rows, at every
batch size:

* ``AR d3llm``: the AR baseline with our engine's ``autoregressive`` method (KV cache, one token per forward);
* ``AR transformers``: the same folder in transformers' ``LlamaForCausalLM`` with its own greedy ``generate``
  (its KV cache), left-padded batches;
* ``teacher vanilla``: one token per forward, no cache;
* ``teacher multi_block`` / ``student multi_block``: d3LLM multi-block decoding as the model folder's
  ``generation_config.json`` sets it up (block size, block thresholds, early stop), once exactly with the folder's
  defaults and then with the delayed KV cache (delay 1) at each entropy threshold of ``--thresholds``.

For every row: exact match (strict ``#### N``), TPF (tokens before end-of-text per forward a row took part in),
tokens/s (the same tokens over the wall time of the timed calls; a warm-up batch runs first), mean latency per
request (the wall time of the call that served it), forward calls, model time per forward and the loop's share of
wall time. Every dLLM row's tokens/s is divided by every AR row's at the same batch size. The verdict line checks
the goal: the best ``multi_block`` row with the KV cache within 1 point of the AR model's accuracy at >= 2x our AR's
tokens/s at batch 1. JSON output carries the hardware, versions and the machine's load.

    python benchmarks/vs_ar.py --threads 1                      # 500 arith test problems, batch 1 and 8
    python benchmarks/vs_ar.py --limit 100 --thresholds 0.2 --out /tmp/vs_ar.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import d3llm
from d3llm.assets import ASSETS
from d3llm.eval.environment import environment, record_path, write_record
from d3llm.eval.runner import evaluate
from d3llm.models.prompts import encode_conversation
from d3llm.tasks.data import load_dataset
from d3llm.tasks.scoring import score

GEN, BLOCK = 48, 16  # the arith responses' length and the trade-off benchmark's block size
# multi_block settings for a folder without decoding defaults (the shipped teacher's, with the cache at delay 1)
MB = dict(block_size=BLOCK, block_add_threshold=0.1, decoded_token_threshold=0.95, early_stop=True)


def multi_block_settings(model, thresholds: list[float]) -> list[tuple[str, dict]]:
    """(label, params) of a dLLM's multi_block rows: the folder's own defaults, then the KV cache (delay 1) at each
    threshold on top of the folder's other defaults (or :data:`MB` when the folder has none)."""
    base = {} if getattr(model, "generation_config", None) is not None else dict(MB)
    rows = [("multi_block folder defaults", {"max_new_tokens": GEN, **base})]
    rows += [(f"multi_block cache H<={h}", {"max_new_tokens": GEN, **base, "threshold": h, "cache_delay_iter": 1})
             for h in thresholds]
    return rows


def engine_row(label, model, tokenizer, dataset, method, params, batch, limit) -> dict:
    """One row decoded by ``d3llm.generate`` (through the evaluation runner)."""
    r = evaluate(model, tokenizer, dataset, method, dict(params), batch_size=batch, limit=limit)
    # forward calls: per batch call, the NFE of its longest row (rows leave the batch, the batch forwards go on)
    forwards = sum(max(rec.nfe for rec in r.records[i:i + batch]) for i in range(0, r.n, batch))
    latency = sum(rec.batch_wall_s for rec in r.records) / r.n
    return row(label, method, r.params, batch, r.n, r.strict, r.tokens, r.nfe, forwards, r.wall_s, r.model_s,
               latency)


def transformers_row(label, folder, tokenizer, dataset, batch, limit) -> dict:
    """The AR folder in transformers' LlamaForCausalLM, greedy ``generate`` with its KV cache."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    clock = {"s": 0.0, "calls": 0}
    forward = hf.forward

    def timed_forward(*args, **kwargs):
        t0 = time.perf_counter()
        out = forward(*args, **kwargs)
        clock["s"] += time.perf_counter() - t0
        clock["calls"] += 1
        return out

    hf.forward = timed_forward
    examples = [dataset[i] for i in range(min(limit, len(dataset)))]
    prompts = [encode_conversation(tokenizer, ex.question, getattr(ex, "history", ())) for ex in examples]

    def run(chunk):
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=GEN, do_sample=False, eos_token_id=eos,
                              pad_token_id=eos, use_cache=True)
        wall = time.perf_counter() - t0
        rows = [r[: r.index(eos)] if eos in r else r for r in out[:, width:].tolist()]
        return rows, wall

    run(prompts[:batch])  # warm-up
    clock.update(s=0.0, calls=0)
    texts, tokens, nfe, wall, latency = [], 0, 0, 0.0, 0.0
    for i in range(0, len(prompts), batch):
        rows, w = run(prompts[i:i + batch])
        wall += w
        latency += w * len(rows)
        tokens += sum(len(r) for r in rows)
        nfe += sum(min(len(r) + 1, GEN) for r in rows)  # the forwards each row needed, its EOS included
        texts += [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    accuracy = score(texts, [ex.gold for ex in examples]).strict
    return row(label, "transformers generate", {"max_new_tokens": GEN, "do_sample": False, "use_cache": True},
               batch, len(prompts), accuracy, tokens, nfe, clock["calls"], wall, clock["s"], latency / len(prompts))


def row(label, method, params, batch, n, accuracy, tokens, nfe, forwards, wall, model_s, latency) -> dict:
    return {"label": label, "method": method, "params": params, "batch": batch, "n": n,
            "exact_match": round(accuracy, 2), "tpf": round(tokens / nfe, 3), "tokens": tokens, "nfe": nfe,
            "forwards": forwards, "tokens_per_s": round(tokens / wall, 1), "wall_s": round(wall, 3),
            "latency_ms": round(1e3 * latency, 2), "model_s": round(model_s, 3),
            "ms_per_forward": round(1e3 * model_s / forwards, 3), "loop_share": round(1 - model_s / wall, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ar", default=str(ASSETS / "arith-ar"), help="the causal AR model folder")
    ap.add_argument("--teacher", default=str(ASSETS / "arith-teacher"), help="the dLLM teacher folder")
    ap.add_argument("--student", default=str(ASSETS / "arith-student"),
                    help="the distilled student folder (skipped when it does not exist)")
    ap.add_argument("--limit", type=int, default=500, help="held-out arith test problems")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--thresholds", default="0.05,0.2,0.5", help="multi_block entropy thresholds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=record_path, default="benchmarks/results/vs_ar.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    dataset = load_dataset("arith", default_split="test")
    tokenizer = d3llm.load_tokenizer(args.ar)
    ar = d3llm.load_model(args.ar, device="cpu")
    dllms = [("teacher", args.teacher)]
    if (Path(args.student) / "config.json").is_file():
        dllms.append(("student", args.student))
    else:
        print(f"no student at {args.student}: skipping its rows")
    dllm_models = {name: d3llm.load_model(folder, device="cpu") for name, folder in dllms}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"{args.limit} arith test problems, {GEN} new tokens, threads {torch.get_num_threads()}")

    rows = []

    def show(r):
        rows.append(r)
        print(f"{r['label']:42s} batch {r['batch']}  exact {r['exact_match']:6.2f}%  TPF {r['tpf']:5.2f}  "
              f"{r['tokens_per_s']:8.1f} tok/s  latency {r['latency_ms']:7.1f} ms  "
              f"{r['ms_per_forward']:6.3f} ms/forward  loop {100 * r['loop_share']:4.1f}%", flush=True)

    for batch in (int(b) for b in args.batches.split(",")):
        show(engine_row("AR d3llm autoregressive", ar, tokenizer, dataset, "autoregressive",
                        {"max_new_tokens": GEN}, batch, args.limit))
        show(transformers_row("AR transformers generate", args.ar, tokenizer, dataset, batch, args.limit))
        for name, _ in dllms:
            model = dllm_models[name]
            if name == "teacher":
                show(engine_row("teacher vanilla", model, tokenizer, dataset, "vanilla",
                                {"max_new_tokens": GEN, "block_size": BLOCK, "steps": GEN}, batch, args.limit))
            for label, params in multi_block_settings(model, thresholds):
                show(engine_row(f"{name} {label}", model, tokenizer, dataset, "multi_block", params, batch,
                                args.limit))

    # ratios: every dLLM row's tokens/s over every AR row's, at the same batch size
    for r in rows:
        if not r["label"].startswith("AR"):
            r["speedup"] = {a["label"]: round(r["tokens_per_s"] / a["tokens_per_s"], 2) for a in rows
                            if a["label"].startswith("AR") and a["batch"] == r["batch"]}
    ar_ours = {r["batch"]: r for r in rows if r["label"] == "AR d3llm autoregressive"}
    verdict = {}
    for batch, base in ar_ours.items():
        eligible = [r for r in rows if r["batch"] == batch and r["method"] == "multi_block"
                    and r["params"].get("cache_delay_iter") is not None  # with the KV cache
                    and r["exact_match"] >= base["exact_match"] - 1.0]
        best = max(eligible, key=lambda r: r["tokens_per_s"], default=None)
        verdict[batch] = None if best is None else {
            "row": best["label"], "exact_match": best["exact_match"], "ar_exact_match": base["exact_match"],
            "ratio_to_ar_d3llm": best["speedup"]["AR d3llm autoregressive"], "goal_2x_met": (
                best["speedup"]["AR d3llm autoregressive"] >= 2.0) if batch == 1 else None}
    print("\nspeed-ups (tokens/s of each dLLM row / tokens/s of each AR row, same batch):")
    for r in rows:
        if "speedup" in r:
            print(f"  {r['label']:42s} batch {r['batch']}  " + "  ".join(f"x{v:5.2f} vs {k}"
                                                                       for k, v in r["speedup"].items()))
    for batch, v in verdict.items():
        print(f"batch {batch}: best multi_block within 1 point of AR accuracy: {v}")

    from transformers import __version__ as transformers_version

    payload = {"command": " ".join(["python", Path(sys.argv[0]).as_posix(),
                                    *(argv if argv is not None else sys.argv[1:])]),
               "limit": args.limit, "gen": GEN, "rows": rows, "verdict": verdict,
               "models": {"ar": args.ar, **{name: folder for name, folder in dllms}},
               "environment": {**environment(ar), "transformers": transformers_version,
                               "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"wrote {write_record(args.out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
