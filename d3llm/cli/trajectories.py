"""``d3llm trajectories``: stage 1 of pseudo-trajectory distillation, and converters to the reference's format.

    d3llm trajectories extract --teacher DIR --data arith --limit 2000 --out runs/traj    # the teacher's orders
    torchrun --nproc_per_node 2 -m d3llm.cli.main trajectories extract ...               # data parallel
    d3llm trajectories import-reference trajectory_data.json --out runs/traj --teacher DIR
    d3llm trajectories export-reference runs/traj out.json

A killed extraction continues when the same command is run again (finished shards are verified and kept).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.distill.config import ExtractConfig

    d = ExtractConfig(teacher="", data="", out="")
    from d3llm.cli.options import add_parser

    p = add_parser(sub, "trajectories", "extract teacher trajectories; import/export the reference format", __doc__)
    cmds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    e = cmds.add_parser("extract", help="decode prompts with the teacher, one token per forward, and record the "
                                        "order (SPEC 6)")
    e.add_argument("--teacher", default=None, help="teacher model folder or shipped model name (default: the shipped teacher)")
    e.add_argument("--data", required=True, help="'arith' (the built-in task's train split), 'arith:test', or a "
                                                 "JSONL file with 'question' (or 'prompt_ids') and optional "
                                                 "'answer' / 'gt_answer'")
    e.add_argument("--out", required=True, help="output folder (Parquet shards and a manifest)")
    e.add_argument("--limit", type=int, default=None, help="decode only the first N rows (required for 'arith')")
    e.add_argument("--gen-length", type=int, default=d.gen_length, help="generated tokens per row "
                                                                         "(default: %(default)s, the arith task's)")
    e.add_argument("--block-size", type=int, default=d.block_size, help="teacher block size (default: %(default)s)")
    e.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="feed the raw question (the reference's LLaDA generator does); default: the chat template")
    e.add_argument("--attempts", type=int, default=d.attempts,
                   help="tries per row at temperatures 0.0, 0.1, ... while the answer is wrong (default: %(default)s)")
    e.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per teacher decode "
                                                                         "(default: %(default)s)")
    e.add_argument("--shard-size", type=int, default=d.shard_size, help="rows per shard, the unit of resumption "
                                                                         "(default: %(default)s)")
    e.add_argument("--seed", type=int, default=d.seed, help="sampling seed of the retries (default: %(default)s)")
    e.add_argument("--data-seed", type=int, default=d.data_seed, help="which built-in problems "
                                                                       "(default: %(default)s)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--dtype", default=None, help="teacher dtype (default: as stored)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: on a terminal)")
    e.set_defaults(func=run_extract)

    i = cmds.add_parser("import-reference", help="convert the reference's trajectory JSON (rows with 'trajectory' "
                                                 "= the list of full states) into a trajectory folder")
    i.add_argument("file", help="a JSON list (or JSONL) of reference rows")
    i.add_argument("--out", required=True, help="output trajectory folder")
    i.add_argument("--teacher", default=None, help="the teacher that made them: stamps its hashes and mask id")
    i.add_argument("--mask-id", type=int, default=None, help="the mask token id (default: the teacher's, else "
                                                             "LLaDA's 126336)")
    i.set_defaults(func=run_import)

    x = cmds.add_parser("export-reference", help="write a trajectory folder in the reference's JSON format")
    x.add_argument("folder", help="trajectory folder")
    x.add_argument("out", help="output JSON file")
    x.set_defaults(func=run_export)


def run_extract(args: argparse.Namespace) -> int:
    from d3llm.cli.options import teacher_folder
    from d3llm.distill.config import ExtractConfig
    from d3llm.distill.extract import extract

    args.teacher = teacher_folder(args.teacher)
    cfg = ExtractConfig(teacher=args.teacher, data=args.data, out=args.out, limit=args.limit,
                        gen_length=args.gen_length, block_size=args.block_size, chat_template=args.chat_template,
                        attempts=args.attempts, batch_size=args.batch_size, shard_size=args.shard_size, seed=args.seed,
                        data_seed=args.data_seed, device=args.device, dtype=args.dtype, threads=args.threads,
                        progress=args.progress)
    extract(cfg)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from d3llm.distill.reference import import_reference

    from d3llm.cli.options import check_model_folder

    teacher = check_model_folder(args.teacher) if args.teacher else None
    manifest = import_reference(args.file, args.out, teacher=teacher, mask_id=args.mask_id)
    print(f"imported {manifest['rows']} trajectories into {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from d3llm.cli.options import output_file
    from d3llm.distill.reference import export_reference

    output_file(args.out, flag=None)
    n = export_reference(args.folder, args.out)
    print(f"wrote {n} rows in the reference format to {args.out}")
    return 0
