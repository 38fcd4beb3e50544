"""Logit parity at the real 8B/7B shapes: our models against the reference modeling code, in bf16.

For each family, a random-weight checkpoint of the real shape (``d3llm init llada-8b-instruct`` /
``dream-7b-instruct``: bf16, 4 shards with an index) is run on one canvas (a seeded prompt followed by MASK
tokens, as a decoder's first forward sees it) twice, each in a process of its own so that only one 8B-sized model
is ever in memory:

* **ours**: ``d3llm.load_model(DIR)`` (memory-mapped bf16), one forward;
* **reference**: the reference repository's own modeling code (``hao-ai-lab/d3LLM``,
  ``baseline/Fast_dLLM_v1/{llada,dream}/model``: ``LLaDAModelLM`` and ``DreamModel``), imported from a checkout
  you point to and run under a Python that has the transformers version it was written for (4.49), loading the same
  folder with ``from_pretrained(..., torch_dtype=bfloat16)``.

The logits of every canvas position are compared: bitwise-equal positions, max absolute difference, argmax
agreement. Dream's reference model returns unshifted logits (position i's output scores token i+1; Dream's
generation code shifts them), ours are aligned, so ours[i] is compared with the reference's [i-1] (and [0] with
[0]). The accepted result is **bitwise equality at every position**: both sides run the same bf16 operations in
the same order on the same weights (matmuls, SDPA without a mask, RMSNorm and RoPE as the reference computes
them), so any difference is a change of arithmetic and is reported as a failure, with the argmax agreement to tell
a rounding change from a bug.

Nothing of the reference is stored in this project: give ``--reference-repo`` a checkout
(``git clone https://github.com/hao-ai-lab/d3LLM``, snapshot e5bfcac) and ``--reference-python`` a Python with
``torch`` and ``transformers==4.49.0`` (a separate venv; ``pip install torch==2.13.0 transformers==4.49.0
safetensors accelerate``).

    python benchmarks/parity_full_width.py --reference-repo ~/src/d3LLM --reference-python ~/refenv/bin/python
    python benchmarks/parity_full_width.py ... --configs llada-small --dir /tmp/pf    # a quick check of the script

About 3-5 minutes per family here (2 cores) when the folders exist (``--dir``; e.g. the ones
``benchmarks/real_scale_io.py --keep`` leaves), plus about a minute per family to write them; 16 GB of disk each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_scale_io import drop_page_cache, memory_status, run_child  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE_PACKAGES = {"llada": "baseline/Fast_dLLM_v1/llada", "dream": "baseline/Fast_dLLM_v1/dream"}


def reference_model(family: str, repo: Path, folder: Path, dtype=None):
    """The reference repository's model class for ``family``, loaded from ``folder`` in ``dtype`` (default bf16;
    this process must have the transformers version the reference was written for)."""
    import torch

    sys.path.insert(0, str(repo / REFERENCE_PACKAGES[family]))  # its ``model`` package (relative imports inside)
    if family == "llada":
        from model.modeling_llada import LLaDAModelLM as cls
    else:
        from model.modeling_dream import DreamModel as cls
    kwargs = {"attn_implementation": "sdpa"} if family == "dream" else {}
    return cls.from_pretrained(str(folder), torch_dtype=dtype or torch.bfloat16, **kwargs).eval()


def side(name: str, family: str, folder: Path, ids_file: Path, out: Path, repo: Path | None, threads: int) -> dict:
    """One side of the comparison in this process: load, forward the canvas once, save the logits (bf16)."""
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    ids = torch.tensor(json.loads(ids_file.read_text()), dtype=torch.long)
    record: dict = {"side": name, "baseline_rss": memory_status()["VmRSS"]}
    dropped = drop_page_cache()
    start = time.perf_counter()
    if name == "ours":
        import d3llm

        model = d3llm.load_model(folder)
    else:
        model = reference_model(family, repo, folder)
        import transformers

        record["transformers"] = transformers.__version__
    record["load_seconds"] = time.perf_counter() - start
    record["page_cache_dropped"] = dropped
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(ids).logits
    record["forward_seconds"] = time.perf_counter() - start  # cold: includes paging the weights in
    record["logits_dtype"] = str(logits.dtype)
    save_file({"logits": logits.contiguous()}, str(out))
    record.update(memory_status())
    return record


def compare(family: str, ours, theirs) -> dict:
    """Per-position comparison of ``[1, T, V]`` logits (Dream's reference side shifted to ours first)."""
    import torch

    if family == "dream":  # reference output i scores token i+1; ours are aligned (position 0: its own output)
        theirs = torch.cat([theirs[:, :1], theirs[:, :-1]], dim=1)
    ours, theirs = ours[0].float(), theirs[0].float()
    diff = (ours - theirs).abs().amax(dim=-1)
    return {
        "positions": ours.shape[0],
        "bitwise_equal_positions": int((ours == theirs).all(dim=-1).sum()),
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": float(theirs.abs().max()),
        "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="llada-8b-instruct,dream-7b-instruct")
    parser.add_argument("--reference-repo", type=Path, required=True, help="a checkout of hao-ai-lab/d3LLM")
    parser.add_argument("--reference-python", required=True, help="a Python with transformers 4.49")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/d3llm_real_scale"),
                        help="folder of the checkpoints (<dir>/<config>); existing ones are reused")
    parser.add_argument("--prompt", type=int, default=24, help="prompt tokens before the MASK tokens")
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "parity_full_width.json")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child: one side, one JSON line
        print(json.dumps(side(args.side, args.family, args.folder, args.ids, args.logits, args.reference_repo,
                              args.threads)))
        return

    import torch
    from safetensors.torch import load_file

    from d3llm.models.checkpoint import count_parameters
    from d3llm.models.configs import named_config
    from d3llm.models.random_checkpoint import init_checkpoint

    repo = args.reference_repo.expanduser().resolve()
    for family, package in REFERENCE_PACKAGES.items():
        if not (repo / package / "model").is_dir():
            raise SystemExit(f"--reference-repo {repo}: no {package}/model (expected a hao-ai-lab/d3LLM checkout)")
    version = subprocess.run([args.reference_python, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True)
    if version.returncode != 0:
        raise SystemExit(f"--reference-python {args.reference_python} cannot import transformers:\n{version.stderr}")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    report = {"command": " ".join(["python", "benchmarks/parity_full_width.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPU cores, {ram / 2**30:.0f} GiB RAM, torch {torch.__version__}, "
                         f"{args.threads} threads",
              "reference": {"repo_commit": _commit(repo), "transformers": version.stdout.strip()},
              "accepted": "bitwise-equal bf16 logits at every position", "configs": {}}
    for name in args.configs.split(","):
        config = named_config(name)
        folder = args.dir / name
        start = time.perf_counter()
        written = not (folder / "config.json").exists()
        if written:
            init_checkpoint(config, folder, seed=0)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, config.mask_token_id - 100, (1, args.prompt), generator=generator)
        ids = torch.cat([prompt, torch.full((1, args.masks), config.mask_token_id)], dim=1)
        ids_file = folder.parent / f"{name}.ids.json"
        ids_file.write_text(json.dumps(ids.tolist()))
        record = {"checkpoint_written_seconds": time.perf_counter() - start if written else None,
                  "parameters": count_parameters(config), "canvas": f"{args.prompt} prompt + {args.masks} MASK"}
        logits = {which: folder.parent / f"{name}.{which}.safetensors" for which in ("ours", "reference")}
        for which, python in (("ours", sys.executable), ("reference", args.reference_python)):
            record[which] = run_child(["--side", which, "--family", config.family, "--folder", str(folder),
                                       "--ids", str(ids_file), "--logits", str(logits[which]),
                                       "--reference-repo", str(repo), "--threads", str(args.threads),
                                       "--reference-python", args.reference_python], __file__, python)
            print(name, which, json.dumps(record[which]), flush=True)
        ours, theirs = (load_file(str(logits[which]))["logits"] for which in ("ours", "reference"))
        record["comparison"] = compare(config.family, ours, theirs)
        record["passed"] = record["comparison"]["bitwise_equal_positions"] == record["comparison"]["positions"]
        print(name, json.dumps(record["comparison"]), "PASSED" if record["passed"] else "FAILED", flush=True)
        report["configs"][name] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)
    if not all(r["passed"] for r in report["configs"].values()):
        raise SystemExit(1)


def _commit(repo: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
