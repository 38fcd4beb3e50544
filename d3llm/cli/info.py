"""d3llm info [DIR | --model DIR]: what a model folder holds (family, sizes, special ids, weight files, decoding
defaults), without loading its weights (each weight file's header is checked: a truncated or unreadable file is an
error). DIR may be a shipped model's name (teacher, student, ar); without it: the shipped teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from d3llm.cli.options import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "info", "describe a model folder", __doc__)
    p.add_argument("model", nargs="?", default=None, metavar="DIR|NAME",
                   help="model folder (config.json + safetensors) or shipped model name (default: the "
                        "shipped teacher)")
    p.add_argument("--model", dest="model_flag", default=None, metavar="DIR|NAME",
                   help="the same folder as a flag, as every other command takes it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.cli.options import model_folder
    from d3llm.models.checkpoint import check_weight_files, count_parameters, load_config, weight_files
    from d3llm.models.generation_config import GenerationConfig

    from d3llm.errors import ConfigError

    if args.model_flag is not None:
        if args.model is not None and args.model != args.model_flag:
            raise ConfigError(f"two model folders given: {args.model!r} and --model {args.model_flag!r}; give one")
        args.model = args.model_flag
    folder = model_folder(args)
    config = load_config(folder)
    fmt, files = weight_files(Path(folder))
    check_weight_files(fmt, files)
    n_params = count_parameters(config)
    generation = GenerationConfig.load(folder)
    info = {
        "folder": str(folder), "family": config.family, "model_type": config.model_type, "layers": config.num_layers,
        "hidden_size": config.hidden_size, "heads": config.num_heads, "kv_heads": config.num_kv_heads,
        "intermediate_size": config.intermediate_size, "vocab_size": config.padded_vocab_size,
        "max_length": config.max_length, "mask_token_id": config.mask_token_id, "eos_token_id": config.eos_token_id,
        "parameters": n_params, "weights_format": fmt,
        "weight_files": sorted({p.name for p in files.values()}),
        "generation_config": generation.describe() if generation is not None else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "generation_config":
            continue
        print(f"{key:<{width}}  {value}")
    if generation is None:
        print(f"{'decoding':<{width}}  no generation_config.json: every decoder uses its built-in defaults")
    else:
        print(f"decoding defaults ({generation.source}):")
        for key, value in generation.describe().items():
            print(f"  {key:<{width - 2}}  {json.dumps(value)}")
    return 0

