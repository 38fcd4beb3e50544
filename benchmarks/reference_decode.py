"""The reference's own decoding functions on the prompts and checkpoint of a ``benchmarks/decode.py`` run, at batch 1:
tokens per second side by side with ours, and whether the tokens are identical.

``benchmarks/decode.py --save-tokens FILE`` records its prompts, parameters and each setting's batch-1 tokens and
figures. This script (run under a Python that has the transformers version the reference was written for, with a
checkout of hao-ai-lab/d3LLM; nothing of the reference is stored in this project) loads the same folder with the
reference's ``LLaDAModelLM`` (``baseline/Fast_dLLM_v1/llada``: PyTorch SDPA attention when flash-attn is absent)
and runs, request by request, the reference function behind each setting:

* ``vanilla``: ``generate(..., threshold=None)`` (low-confidence remasking, ``steps`` = ``gen``);
* ``fast_dllm``: ``generate(..., threshold=confidence)``;
* ``fast_dllm+prefix`` / ``fast_dllm+dual``: ``generate_with_prefix_cache`` / ``generate_with_dual_cache``.

Identical tokens are required where no cache is involved (``vanilla``, ``fast_dllm``: the exit status says whether
they were). With a cache, the reference's baseline model keeps keys before RoPE and re-rotates them at every call,
ours keeps them rotated (SPEC 3.6): the same in exact arithmetic but not bit for bit, so a near-tie can commit
another token; those rows report the share of identical requests and of identical token positions.

The other settings (block entropy and multi-block) have no reference function that runs on this model class (the
d3LLM decoders ship their model code with the hub checkpoints), so they are listed as not compared. Tokens are
compared up to the first EOS (ours stop there; the reference fills its whole canvas). Tokens per second count the
same tokens (before the first EOS) over each side's wall time, CUDA synchronised.

    python benchmarks/decode.py --model DIR --device cuda --dtype bfloat16 --batches 1 --save-tokens ours.json
    python benchmarks/reference_decode.py --reference-repo ~/src/d3LLM --model DIR --ours ours.json --out ref.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_full_width import REFERENCE_PACKAGES, reference_model  # noqa: E402

REFERENCE_FUNCTIONS = {"vanilla": ("generate", False), "fast_dllm": ("generate", True),
                       "fast_dllm+prefix": ("generate_with_prefix_cache", True),
                       "fast_dllm+dual": ("generate_with_dual_cache", True)}
# The reference's baseline model caches keys before RoPE and re-rotates them every call; ours caches them rotated
# (SPEC 3.6): equal in exact arithmetic, not bit for bit, so with a cache a near-tie may commit another token.
EXACT_EXPECTED = {"vanilla", "fast_dllm"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", type=Path, required=True, help="a checkout of hao-ai-lab/d3LLM")
    ap.add_argument("--model", type=Path, required=True, help="the folder decode.py ran on")
    ap.add_argument("--ours", type=Path, required=True, help="decode.py --save-tokens output")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch

    ours = json.loads(args.ours.read_text())
    repo = args.reference_repo.expanduser().resolve()
    device = torch.device(args.device)
    model = reference_model("llada", repo, args.model, getattr(torch, ours["dtype"])).to(device)  # ours' dtype
    reference = __import__("generate")  # baseline/Fast_dLLM_v1/llada/generate.py, on sys.path by reference_model
    eos = ours["eos_token_id"]
    rows = {}
    for name, run in ours["settings"].items():
        if name not in REFERENCE_FUNCTIONS:
            rows[name] = {"compared": False, "why": "no reference function runs on this model class"}
            continue
        function, thresholded = REFERENCE_FUNCTIONS[name]
        decode = getattr(reference, function)
        kwargs = dict(steps=ours["gen"], gen_length=ours["gen"], block_length=ours["block"], temperature=0.0,
                      remasking="low_confidence", mask_id=ours["mask_token_id"],
                      threshold=ours["confidence"] if thresholded else None)
        try:
            first = torch.tensor([ours["prompts"][0]], device=device)
            decode(model, first, **kwargs)  # warm-up, untimed (as decode.py's)
            identical, tokens, wall, nfe, same_positions, positions = 0, 0, 0.0, 0, 0, 0
            for prompt, mine in zip(ours["prompts"], run["tokens"]):
                ids = torch.tensor([prompt], device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                x, steps = decode(model, ids, **kwargs)
                generated = x[0, len(prompt):].tolist()  # host copy: synchronises
                wall += time.perf_counter() - start
                nfe += int(steps)
                cut = generated.index(eos) if eos in generated else len(generated)
                identical += generated[:cut] == mine
                tokens += cut
                same_positions += sum(a == b for a, b in zip(generated, mine))
                positions += len(mine)
        except Exception as exc:  # the reference's own failure (e.g. its step schedule running out), reported
            rows[name] = {"compared": False, "function": function, "why": f"the reference raised {exc!r}"}
            print(name, json.dumps(rows[name]), flush=True)
            continue
        rows[name] = {"compared": True, "function": function, "exact_expected": name in EXACT_EXPECTED,
                      "requests": len(run["tokens"]), "identical_requests": identical,
                      "identical_token_share": same_positions / max(positions, 1),
                      "reference_tokens_per_s": tokens / wall,
                      "reference_nfe": nfe, "ours_tokens_per_s": run["batch_1"]["tokens_per_s"],
                      "ours_nfe": run["batch_1"]["nfe"],
                      "ours_over_reference": run["batch_1"]["tokens_per_s"] / (tokens / wall)}
        print(name, json.dumps(rows[name]), flush=True)
    import transformers

    record = {"command": " ".join(["python", "benchmarks/reference_decode.py", *sys.argv[1:]]),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "reference_package": REFERENCE_PACKAGES["llada"], "settings": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", args.out)
    compared = [r for r in rows.values() if r["compared"] and r["exact_expected"]]
    return 0 if compared and all(r["identical_requests"] == r["requests"] for r in compared) else 1


if __name__ == "__main__":
    sys.exit(main())
