"""Decoding benchmark: tokens/s of every decoder at several batch sizes and with requests arriving while others
run, and the split of wall time into model forwards and the decoder's own cost.

For each setting, in one run and one after the other: batch 1 (the requests decoded one at a time), every batch
size of ``--batches`` (the same requests in batches), and a *staggered* scenario: the same requests join one
``d3llm.Engine`` one every ``--stagger-every`` steps while the earlier ones run (a server's continuous batching,
arrivals counted in engine steps). Each row reports NFE, TPF (generated tokens before EOS per forward), positions
(forwarded) per generated token, tokens/s,
its ratio to batch 1 measured in the same run, wall and model time and the loop's share ``(wall - model) / wall``,
the *forward gain* (generated tokens per second of model time over batch 1's: what batching gave the forwards
themselves, before the loop's share), and the setting's *ceiling*: the mean slice a row forwards per step at batch 1, and what batching gains at most on
this hardware for slices of that length (tokens/s of one plain ``[b, slice]`` forward over ``[1, slice]``; on a CPU
a forward of ~100 tokens already runs near the matmul's best per-token speed, so batching can gain little there).
Prints a table (``--markdown`` adds the one of docs/benchmarks.md) and writes JSON stamped with the hardware and software
versions.

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
from d3llm.eval.environment import record_path, write_record as save_record
from d3llm.files import atomic_write_text, make_folder

MB = dict(block_add_threshold=0.1, decoded_token_threshold=0.95, early_stop=True)
NO_CACHE = dict(cache_delay_iter=None, refresh_interval=None)  # explicit: the folder's defaults may set a cache


def settings(gen: int, block: int, threshold: float, confidence: float) -> dict[str, tuple[str, dict]]:
    """Every setting names all its parameters, so a model folder's defaults never change what is measured."""
    return {
        "vanilla": ("vanilla", dict(steps=gen, temperature=0.0)),
        "block_entropy": ("block_entropy", dict(steps=gen, threshold=threshold, temperature=0.0)),
        "fast_dllm": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="none", temperature=0.0)),
        "fast_dllm+prefix": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="prefix", temperature=0.0)),
        "fast_dllm+dual": ("fast_dllm", dict(steps=gen, threshold=confidence, cache="dual", temperature=0.0)),
        "multi_block": ("multi_block", dict(MB, **NO_CACHE, threshold=threshold, temperature=0.0)),
        "multi_block+cache(D=1)": ("multi_block", dict(MB, threshold=threshold, cache_delay_iter=1,
                                                        refresh_interval=None, temperature=0.0)),
        "multi_block+cache(D=2,R=3)": ("multi_block", dict(MB, threshold=threshold, cache_delay_iter=2,
                                                            refresh_interval=3, temperature=0.0)),
        "multi_block+cache(D=2,R=3)+suffix": ("multi_block", dict(MB, threshold=threshold, cache_delay_iter=2,
                                                                   refresh_interval=3, suffix_cache=True,
                                                                   temperature=0.0)),
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
    if Path(source).is_dir() and (Path(source) / "tokenizer.json").is_file():
        from d3llm.tasks.data import ArithDataset
        from d3llm.models.prompts import encode_conversation

        tokenizer = d3llm.load_tokenizer(source)
        data = ArithDataset("test", size=n, seed=seed)
        prompts = [encode_conversation(tokenizer, ex.question, getattr(ex, "history", ())) for ex in data]
        return prompts, f"arith:test[:{n}] with the chat template"
    g = torch.Generator().manual_seed(seed)
    hi = min(model.config.vocab_size, model.config.mask_token_id or model.config.vocab_size) - 1
    return [torch.randint(0, hi, (length,), generator=g).tolist() for _ in range(n)], f"{n} random prompts of {length}"


def figures(batch, tokens: int, nfe: int, wall: float, model_t: float, positions: int) -> dict:
    return {"batch": batch, "nfe": nfe, "tokens": tokens, "tpf": tokens / nfe,
            "positions_per_token": positions / max(tokens, 1), "tokens_per_s": tokens / wall,
            "wall_s": wall, "model_s": model_t, "loop_s": wall - model_t, "loop_share": (wall - model_t) / wall}


def measure(model, prompts, method, params, batch: int, repeats: int, outputs: list | None = None) -> dict:
    """Decode ``prompts`` in batches of ``batch`` with ``d3llm.generate``; a warm-up batch runs first, untimed.
    ``outputs``, if given, receives each request's generated tokens (of the first repeat)."""
    d3llm.generate(model, prompts[:batch], method, **params)
    wall = model_t = 0.0
    nfe = tokens = positions = 0
    for repeat in range(repeats):
        for i in range(0, len(prompts) - batch + 1, batch):
            r = d3llm.generate(model, prompts[i : i + batch], method, **params)
            if outputs is not None and repeat == 0:
                outputs.extend(r.tokens)
            wall += r.wall_time
            model_t += r.model_time
            nfe += int(r.nfe.sum())
            tokens += int(r.num_tokens.sum())
            positions += int(r.positions.sum())
    return figures(batch, tokens, nfe, wall, model_t, positions)


def staggered(model, prompts, method, params, every: int, repeats: int) -> dict:
    """The requests join one engine, one every ``every`` steps, while the earlier ones run (timed from the first
    arrival to the last finished request)."""
    wall = model_t = 0.0
    nfe = tokens = positions = 0
    for _ in range(repeats):
        engine = d3llm.Engine(model, method, **params)
        t0 = time.perf_counter()
        added = step = 0
        while added < len(prompts) or engine.has_work:
            if added < len(prompts) and step % every == 0:
                engine.add_request(prompts[added])
                added += 1
            for event in engine.step():
                if event.finished:
                    nfe += event.output.nfe
                    tokens += len(event.output.tokens)
            step += 1
        wall += time.perf_counter() - t0
        model_t += engine.stats.model_time
        positions += engine.stats.positions
    return figures(f"staggered/{every}", tokens, nfe, wall, model_t, positions)


def mean_slice(model, prompts, method, params, n: int = 8) -> float:
    """Mean tokens a row forwards per step at batch 1 (over the first ``n`` requests, decoded alone)."""
    positions = steps = 0
    for prompt in prompts[:n]:
        engine = d3llm.Engine(model, method, **params)
        engine.add_request(prompt)
        while engine.has_work:
            engine.step()
        positions, steps = positions + engine.stats.positions, steps + engine.stats.steps
    return positions / steps


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer must not stop before the kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_ceiling(model, length: int, batches: list[int], repeats: int = 3, rounds: int = 3) -> dict:
    """What batching can gain on this hardware at most for slices of ``length`` tokens: tokens/s of one plain
    forward of ``[b, length]`` tokens over that of ``[1, length]`` (same weights, no cache, no decoder), by batch.
    Each batch size is timed in ``rounds`` rounds of ``repeats`` forwards, the batch sizes interleaved, and its
    fastest round counts (a machine whose speed drifts between runs otherwise makes the ratios noisy)."""
    best = {b: float("inf") for b in batches}
    with torch.inference_mode():
        inputs = {b: torch.randint(0, model.config.vocab_size, (b, max(length, 1)), device=model.device)
                  for b in batches}
        for b in batches:
            model(inputs[b])
        for _ in range(rounds):
            for b in batches:
                sync_device(model.device)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model(inputs[b])
                sync_device(model.device)
                best[b] = min(best[b], (time.perf_counter() - t0) / repeats)
    rate = {b: b / best[b] for b in batches}
    return {str(b): rate[b] / rate[batches[0]] for b in batches}


def forward_gain(row: dict, alone: dict) -> float:
    """How much faster per token the model forwards ran in ``row`` than at batch 1 (``alone``), measured in the same
    run: what batching gave the forward itself, before the loop's share is counted."""
    return (row["tokens"] / row["model_s"]) / (alone["tokens"] / alone["model_s"])


def markdown(rows: list[dict], names: list[str], batches: list[int]) -> str:
    """The table of docs/benchmarks.md: tokens/s of every setting per batch size and staggered, with ratios to batch 1."""
    head = ["setting", "TPF", "positions/token"] + [f"batch {b}" for b in batches]
    if isinstance(rows[-1]["batch"], str):
        head.append(rows[-1]["batch"].replace("/", " every "))
    later = [f"batch {b}" for b in batches[1:]] + (["staggered"] if isinstance(rows[-1]["batch"], str) else [])
    head.append("forward gain (" + ", ".join(later) + ")")
    ceiling = "dense_ceiling" in rows[0]
    if ceiling:
        head.append("ceiling (" + ", ".join(f"batch {b}" for b in batches[1:]) + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        mine = [r for r in rows if r["setting"] == name]
        cells = [f"`{name}`", f"{mine[0]['tpf']:.2f}", f"{mine[0]['positions_per_token']:.1f}"]
        for r in mine:
            ratio = "" if r is mine[0] else f" ({r['ratio_to_batch_1']:.2f}x)"
            cells.append(f"{r['tokens_per_s']:,.0f}{ratio}")
        cells.append(", ".join(f"{r['forward_gain']:.2f}x" for r in mine[1:]))
        if ceiling:
            cells.append(", ".join(f"{r['dense_ceiling']:.2f}x" for r in mine[1:] if "dense_ceiling" in r))
        lines.append("| " + " | ".join(cells) + " |")
    loop = [f"`{r['setting']}` {100 * r['loop_share']:.1f}%" for r in rows if r["batch"] == 1]
    return "\n".join(lines) + "\n\nloop share at batch 1: " + ", ".join(loop)


def write_record(path: str, model, source: str, prompt_source: str, **fields) -> None:
    """The run's JSON: what was measured, on which model and prompts, hardware and versions."""
    record = {"model_source": source, "prompts": prompt_source, "argv": sys.argv[1:], "environment": environment(model),
              **fields, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"wrote {save_record(path, record)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: shipped teacher, else random llada-small)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--gen", type=int, default=64, help="max_new_tokens")
    ap.add_argument("--block", type=int, default=32, help="block_size")
    ap.add_argument("--threshold", type=float, default=0.5, help="entropy threshold (multi_block, block_entropy)")
    ap.add_argument("--confidence", type=float, default=0.9, help="confidence threshold (fast_dllm)")
    ap.add_argument("--prompts", type=int, default=32, help="requests per measurement")
    ap.add_argument("--prompt-len", type=int, default=48, help="length of random prompts")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes (the first should be 1: ratios are to it)")
    ap.add_argument("--stagger-every", type=int, default=2, help="steps between arrivals in the staggered run "
                                                                 "(0: skip it)")
    ap.add_argument("--markdown", action="store_true", help="also print the table of docs/benchmarks.md")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--methods", default=None, help="semicolon-separated subset of the setting names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the dense-forward ceiling of each setting")
    ap.add_argument("--save-tokens", default=None, help="write the prompts and each setting's batch-1 tokens here "
                                                        "(JSON; benchmarks/reference_decode.py compares with them)")
    ap.add_argument("--out", type=record_path, default="benchmarks/results/decode.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, source = load(args)
    prompts, prompt_source = make_prompts(model, source, args.prompts, args.prompt_len, seed=0)
    print(f"model: {source} ({model.config.describe()}); prompts: {prompt_source}; threads {torch.get_num_threads()}")
    table = settings(args.gen, args.block, args.threshold, args.confidence)
    names = args.methods.split(";") if args.methods else list(table)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    saved = {"prompts": prompts, "gen": args.gen, "block": args.block, "threshold": args.threshold,
             "confidence": args.confidence, "mask_token_id": model.config.mask_token_id,
             "eos_token_id": model.config.eos_token_id, "dtype": str(model.dtype).removeprefix("torch."),
             "settings": {}}
    for name in names:
        method, params = table[name]
        params = dict(params, max_new_tokens=args.gen, block_size=args.block)
        alone: list = []
        mine = [measure(model, prompts, method, params, batch, args.repeats, alone if batch == 1 else None)
                for batch in batches]
        saved["settings"][name] = {"tokens": alone, "batch_1": mine[0]}
        if args.stagger_every:
            mine.append(staggered(model, prompts, method, params, args.stagger_every, args.repeats))
        ceiling = {}
        if not args.no_ceiling:
            slice_len = mean_slice(model, prompts, method, params)
            ceiling = dense_ceiling(model, round(slice_len), batches)
            print(f"{name:28s} batch-1 slice {slice_len:6.1f} tokens/step; a dense forward of that length gains "
                  + ", ".join(f"{v:.2f}x at batch {b}" for b, v in ceiling.items() if b != str(batches[0])),
                  flush=True)
        for row in mine:
            row.update(setting=name, method=method, ratio_to_batch_1=row["tokens_per_s"] / mine[0]["tokens_per_s"],
                       forward_gain=forward_gain(row, mine[0]))
            if ceiling and isinstance(row["batch"], int):
                row["dense_ceiling"] = ceiling[str(row["batch"])]
            rows.append(row)
            print(f"{name:34s} {str(row['batch']):12s} NFE {row['nfe']:5d}  TPF {row['tpf']:5.2f}  "
                  f"pos/tok {row['positions_per_token']:6.1f}  "
                  f"{row['tokens_per_s']:8.1f} tok/s ({row['ratio_to_batch_1']:4.2f}x)  wall {row['wall_s']:7.3f}s  "
                  f"model {row['model_s']:7.3f}s  loop {100 * row['loop_share']:5.1f}%", flush=True)
    if args.markdown:
        print(markdown(rows, names, batches))
    write_record(args.out, model, source, prompt_source, settings={k: table[k] for k in names}, results=rows)
    if args.save_tokens:
        make_folder(Path(args.save_tokens).parent)
        atomic_write_text(Path(args.save_tokens), json.dumps(saved) + "\n")
        print(f"wrote {args.save_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
