"""Writing, building and loading checkpoints at the real 8B/7B shapes on this machine (random weights, bf16).

For each named config (default: llada-8b-instruct and dream-7b-instruct), each stage runs in a process of its
own, so that each peak resident set (``VmHWM``) is its own:

* ``init``:  ``d3llm init CONFIG --out DIR`` (its ``main``: tensor-by-tensor initialisation, streaming shard writes);
  the peak is compared with the largest shard (target: under about 1.2x);
* ``build``: ``build_model(CONFIG, dtype=bfloat16)`` (allocated once in bf16, initialised in place); the peak is
  compared with the weights' size;
* ``raw``:   ``safetensors.torch.load_file`` on every shard, holding all (the reference read), then every
  memory page of every tensor read once;
* ``load``:  ``d3llm.load_model(DIR)`` (memory-mapped), then every page of every parameter read once, then
  a 16-token forward twice (the first one after the load, the second warm); the peak after the pages are read is
  compared with the weights' size (target: within 10%), the load time with ``raw``'s (target: within 1.5x).

The page cache is dropped before ``raw`` and ``load`` where the system allows it (root), so that both read from the
disk; the record says whether it was. The folder is deleted after each config unless ``--keep``.

    python benchmarks/real_scale_io.py --threads 2          # about 10 minutes and 16 GB of disk at a time
    python benchmarks/real_scale_io.py --configs llada-small --dir /tmp/rs   # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def memory_status() -> dict[str, int]:
    """This process's ``VmHWM`` (peak resident set) and ``VmRSS``, in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def touch(tensor) -> None:
    """Read one element of every memory page of ``tensor`` (pages it in without a temporary copy)."""
    flat = tensor.detach().reshape(-1)
    flat[:: max(1, 4096 // flat.element_size())].float().sum()


def stage(name: str, config: str, folder: Path, threads: int) -> dict:
    """Run one stage in this process and return its record."""
    import torch

    import d3llm  # noqa: F401 - imported before the baseline, as every stage uses it

    torch.set_num_threads(threads)
    record: dict = {"stage": name, "baseline_rss": memory_status()["VmRSS"]}
    if name == "init":  # the command as a user runs it
        from d3llm.cli.main import main

        start = time.perf_counter()
        if main(["init", config, "--out", str(folder), "--overwrite"]) != 0:
            raise SystemExit("d3llm init failed")
        record["seconds"] = time.perf_counter() - start
        shards = sorted(folder.glob("model*.safetensors"))
        record.update(files=len(shards), largest_shard_bytes=max(f.stat().st_size for f in shards),
                      weights_bytes=sum(f.stat().st_size for f in shards))
    elif name == "build":
        from d3llm.models.checkpoint import build_model

        start = time.perf_counter()
        model = build_model(config, dtype=torch.bfloat16)
        record["seconds"] = time.perf_counter() - start
        record["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    elif name == "raw":
        from safetensors.torch import load_file

        record["page_cache_dropped"] = drop_page_cache()
        start = time.perf_counter()
        tensors = {}
        for file in sorted(folder.glob("model*.safetensors")):
            tensors.update(load_file(str(file)))
        record["seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        for t in tensors.values():
            touch(t)
        record["read_seconds"] = time.perf_counter() - start
        record["weights_bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    elif name == "load":
        import d3llm

        record["page_cache_dropped"] = drop_page_cache()
        start = time.perf_counter()
        model = d3llm.load_model(folder, device="cpu")
        record["seconds"] = time.perf_counter() - start
        record["after_load"] = memory_status()
        start = time.perf_counter()
        for p in model.parameters():
            touch(p)
        record["read_seconds"] = time.perf_counter() - start
        record["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        ids = torch.arange(16)[None] % model.config.vocab_size
        for key in ("forward_first_seconds", "forward_warm_seconds"):
            start = time.perf_counter()
            with torch.no_grad():
                model(ids)
            record[key] = time.perf_counter() - start
    else:
        raise SystemExit(f"unknown stage {name!r}")
    record.update(memory_status())
    return record


def run_child(args: list[str], script: str = __file__, python: str = sys.executable) -> dict:
    """Run ``python script *args`` (a benchmark's child mode) and return the JSON of its last output line."""
    out = subprocess.run([python, script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{Path(script).name} {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="llada-8b-instruct,dream-7b-instruct")
    parser.add_argument("--dir", default="/tmp/d3llm_real_scale")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the written folders")
    parser.add_argument("--out", default=str(RESULTS / "real_scale_io.json"))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # a child: one stage, one JSON line
        print(json.dumps(stage(args.stage, args.config, Path(args.dir), args.threads)))
        return

    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    report = {"command": " ".join(["python", "benchmarks/real_scale_io.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPU cores, {ram / 2**30:.0f} GiB RAM, torch {torch.__version__}, "
                         f"{args.threads} threads", "configs": {}}
    for config in args.configs.split(","):
        folder = Path(args.dir) / config
        records = {}
        for name in ("init", "build", "raw", "load"):
            records[name] = run_child(["--stage", name, "--config", config, "--dir", str(folder),
                                       "--threads", str(args.threads)])
            print(config, name, json.dumps(records[name]), flush=True)
        init, build, raw, load = (records[k] for k in ("init", "build", "raw", "load"))
        records["summary"] = {
            "weights_GB": init["weights_bytes"] / 1e9,
            "init_seconds": init["seconds"],
            "init_peak_over_largest_shard": init["VmHWM"] / init["largest_shard_bytes"],
            "build_seconds": build["seconds"], "build_peak_over_weights": build["VmHWM"] / build["weights_bytes"],
            "baseline_rss_GB": load["baseline_rss"] / 1e9,  # torch and d3llm imported: part of every peak below
            "load_seconds": load["seconds"], "raw_load_file_seconds": raw["seconds"],
            "load_over_raw_time": load["seconds"] / raw["seconds"],
            "load_plus_read_over_raw_plus_read": (load["seconds"] + load["read_seconds"])
            / (raw["seconds"] + raw["read_seconds"]),
            "load_peak_over_weights": load["VmHWM"] / load["weights_bytes"],
            "raw_peak_over_weights": raw["VmHWM"] / raw["weights_bytes"],
            "forward_first_seconds": load["forward_first_seconds"],
            "forward_warm_seconds": load["forward_warm_seconds"],
        }
        print(config, json.dumps(records["summary"], indent=1), flush=True)
        report["configs"][config] = records
        if not args.keep:
            shutil.rmtree(folder)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
