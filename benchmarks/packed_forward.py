"""How a batched decoding step should run its rows' slices: packed (ragged) forwards against the alternatives.

The engine's rows need different slices (different blocks, cache lengths, prompt and generation lengths). This
records the slices of real batched runs (the shipped teacher, ``arith`` prompts, requests joining one engine every
``--every`` steps) and times, over exactly those steps, four ways to forward them:

* ``packed`` (what the engine does): linear layers over the concatenated slices, attention per row over its own
  keys, the LM head only at the scored positions;
* ``union`` (the engine before packing): one ``[n, max end - min start]`` forward over the union of the slices, each
  row writing only its own cache slots;
* ``padded``: every slice right-padded to the longest one and the keys to the longest key range, one batched forward
  with a mask (emulated by a forward of the same shapes: the same FLOPs and kernels, not the same numbers);
* ``per-row``: one model call per row.

    python benchmarks/packed_forward.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import d3llm
from d3llm.eval.environment import record_path
from d3llm.models.packed import PackedRows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import sync_device, load, make_prompts, settings, write_record  # noqa: E402


def record_steps(model, prompts, method, params, every: int) -> list[tuple[PackedRows, int]]:
    """The packed rows (and scored positions) of every forward of a staggered run."""
    steps = []
    forward = model.forward_packed

    def spy(tokens, rows, score_index, **kw):
        steps.append((rows, int(score_index.shape[0])))
        return forward(tokens, rows, score_index, **kw)

    model.forward_packed = spy
    try:
        engine = d3llm.Engine(model, method, **params)
        added = step = 0
        while added < len(prompts) or engine.has_work:
            if added < len(prompts) and step % every == 0:
                engine.add_request(prompts[added])
                added += 1
            engine.step()
            step += 1
    finally:
        del model.forward_packed
    return steps


def time_variants(model, steps, cached: bool, vocab: int) -> dict[str, float]:
    """Seconds to run every recorded step in each of the four ways (random token ids: timing only)."""
    n_max = max(len(r.starts) for r, _ in steps)
    length = max(int(max(r.kv_lens.max(), (r.starts + r.lengths).max())) for r, _ in steps)
    cache = model.new_cache(n_max, length) if cached else None
    gen = torch.Generator().manual_seed(0)
    dev = model.device
    totals = dict.fromkeys(("packed", "union", "padded", "per-row"), 0.0)
    for rows, scored in steps:
        n = len(rows.starts)
        ends = rows.starts + rows.lengths
        tokens = torch.randint(0, vocab, (rows.size,), generator=gen).to(dev)
        index = torch.randint(0, rows.size, (scored,), generator=gen).to(dev)
        canvas = torch.randint(0, vocab, (n, int(ends.max())), generator=gen).to(dev)
        if cache is not None:  # row i in cache row i, its prefix "cached"
            cache.lengths[:] = 0
            cache.lengths[:n] = rows.starts
        packed_rows = PackedRows(rows.starts, rows.lengths, rows.offsets, rows.positions, rows.kv_lens,
                                 np.arange(n))
        sync_device(dev)
        t0 = time.perf_counter()
        model.forward_packed(tokens, packed_rows, index, cache=cache)
        sync_device(dev)
        totals["packed"] += time.perf_counter() - t0

        s, e = int(rows.starts.min()), int(ends.max())
        sub = cache.select_rows(list(range(n))) if cache is not None else None
        uniform = bool((rows.starts == s).all() and (ends == e).all())
        sync_device(dev)
        t0 = time.perf_counter()
        if sub is None:
            model(canvas[:, :e])
        else:
            sub.lengths = rows.starts.astype(np.int64)  # each row's cached prefix
            model(canvas[:, s:e], cache=sub, start=s, append=0, write_range=None if uniform else (rows.starts, ends))
        sync_device(dev)
        totals["union"] += time.perf_counter() - t0

        t_max, k_max = int(rows.lengths.max()), int(rows.kv_lens.max())
        pad_cache = None
        if cache is not None:
            pad_cache = cache.select_rows(list(range(n)))
            pad_cache.lengths[:] = max(k_max - t_max, 0)
        sync_device(dev)
        t0 = time.perf_counter()
        if pad_cache is None:
            model(canvas[:, :t_max] if canvas.shape[1] >= t_max else torch.zeros(n, t_max, dtype=torch.long, device=dev))
        else:
            model(torch.zeros(n, t_max, dtype=torch.long, device=dev), cache=pad_cache, start=max(k_max - t_max, 0), append=0)
        sync_device(dev)
        totals["padded"] += time.perf_counter() - t0

        sync_device(dev)
        t0 = time.perf_counter()
        for i in range(n):
            one = PackedRows(rows.starts[i : i + 1], rows.lengths[i : i + 1], np.zeros(1, dtype=np.int64),
                             rows.positions[rows.offsets[i] : rows.offsets[i] + rows.lengths[i]],
                             rows.kv_lens[i : i + 1], np.array([i]))
            model.forward_packed(tokens[rows.offsets[i] : rows.offsets[i] + rows.lengths[i]], one,
                                 index[: max(scored // n, 1)] % int(rows.lengths[i]), cache=cache)
        sync_device(dev)
        totals["per-row"] += time.perf_counter() - t0
    return totals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--every", default="1,4", help="steps between arrivals of the recorded runs")
    ap.add_argument("--methods", default="multi_block+cache(D=1);fast_dllm+dual;fast_dllm+prefix;multi_block")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=record_path, default="benchmarks/results/packed_forward.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, source = load(args)
    prompts, prompt_source = make_prompts(model, source, args.prompts, 48, seed=0)
    table = settings(args.gen, args.block, 0.5, 0.9)
    print(f"model: {source}; prompts: {prompt_source}; threads {torch.get_num_threads()}")
    results = []
    with torch.inference_mode():
        for name in args.methods.split(";"):
            method, params = table[name]
            params = dict(params, max_new_tokens=args.gen, block_size=args.block)
            cached = d3llm.Engine(model, method, **params).method.uses_cache
            for every in (int(e) for e in args.every.split(",")):
                steps = record_steps(model, prompts, method, params, every)
                time_variants(model, steps[:5], cached, model.config.vocab_size)  # warm-up
                totals = time_variants(model, steps, cached, model.config.vocab_size)
                rows = np.mean([len(r.starts) for r, _ in steps])
                row = {"setting": name, "every": every, "steps": len(steps), "mean_rows": float(rows), **totals}
                results.append(row)
                cells = "  ".join(f"{k} {v:7.3f}s" for k, v in totals.items())
                print(f"{name:28s} every {every}: {len(steps)} steps, {rows:4.1f} rows/step  {cells}", flush=True)
    write_record(args.out, model, source, prompt_source, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
