"""d3llm init CONFIG --out DIR: write a random-weight checkpoint of a named config in the real layout, to test
infrastructure (serving, sharded loading, launch scripts) before downloading real weights.

CONFIG is a named config: llada-8b-instruct and dream-7b-instruct (also d3llm-llada, d3llm-dream: the d3LLM
checkpoints share those layouts) or a small one (llada-small, dream-small, ...). The folder gets config.json with
every public key, bf16 safetensors shards of at most --max-shard-size with model.safetensors.index.json and the
public tensor names, and a placeholder tokenizer (byte tokens and the real special ids) marked as such in
tokenizer_config.json and README.md. Tensors are initialised and written one at a time: memory stays near the
largest tensor (about 1 GiB at 8B), never a copy of the model. The weights equal build_model(CONFIG, seed=SEED).
"""

from __future__ import annotations

import argparse

from d3llm.cli.options import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "init", "write a random-weight checkpoint of a named config (real layout)", __doc__)
    p.add_argument("config", metavar="CONFIG",  # checked by named_config, whose error lists every name
                   help="named config, e.g. llada-8b-instruct or dream-7b-instruct")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="stored dtype (default bf16)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="largest weight file, e.g. 5GB or 500MB (default 5GB, as the public checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from d3llm.models.checkpoint import count_parameters
    from d3llm.models.configs import named_config
    from d3llm.models.random_checkpoint import init_checkpoint

    config = named_config(args.config)
    print(f"writing a random {args.config} ({count_parameters(config):,} parameters, {args.dtype}) "
          f"to {args.out}", file=sys.stderr)
    write = dict(seed=args.seed, dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    if not sys.stderr.isatty():
        folder = init_checkpoint(args.config, args.out, **write)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      transient=True) as bar:
            task = bar.add_task("init", total=None)
            folder = init_checkpoint(args.config, args.out, **write,
                                     progress=lambda done, total, name: bar.update(task, completed=done, total=total))
    tokenizer = "a placeholder tokenizer" if (folder / "tokenizer.json").is_file() else "no tokenizer"
    print(f"wrote {folder} (random weights and {tokenizer}: see {folder / 'README.md'})")
    return 0
