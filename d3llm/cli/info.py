"""``d3llm info DIR``: what a model folder holds (family, sizes, special ids, weight files), without loading it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model folder", description=__doc__)
    p.add_argument("model", help="model folder (config.json + safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.models.checkpoint import weight_files, expected_tensors, load_config

    config = load_config(args.model)
    fmt, files = weight_files(Path(args.model))
    n_params = sum(_numel(s) for s in expected_tensors(config).values())
    info = {
        "family": config.family, "model_type": config.model_type, "layers": config.num_layers,
        "hidden_size": config.hidden_size, "heads": config.num_heads, "kv_heads": config.num_kv_heads,
        "intermediate_size": config.intermediate_size, "vocab_size": config.padded_vocab_size,
        "max_length": config.max_length, "mask_token_id": config.mask_token_id, "eos_token_id": config.eos_token_id,
        "parameters": n_params, "weights_format": fmt,
        "weight_files": sorted({p.name for p in files.values()}),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
