"""d3llm eval: accuracy, TPF and tokens/s of one decoder setting on a task or a JSONL file.

    d3llm eval --limit 100                                   # the shipped teacher on arith, its decoding defaults
    d3llm eval --task arith --method vanilla --limit 100     # one token per forward
    d3llm eval --turns 2 --limit 100                         # each question after one earlier turn of chat
    d3llm eval --task arith:test:steps=1                     # the one-step questions only
    d3llm eval --model DIR --task data.jsonl --method multi_block --threshold 0.5 --json --out eval.json

With --out FILE, finished batches are kept in FILE.partial as they come: after an interruption (Ctrl-C) the same
command continues where it stopped and writes the FILE an uninterrupted run writes (timings aside); other settings
with the same --out are refused. FILE.partial is removed once FILE is written.
"""

from __future__ import annotations

import argparse
import json

from d3llm.cli.options import (EVAL_BATCH_SIZE, add_decoder_flags, add_model_flags, add_parser, apply_threads,
                               decoder_params, model_folder, output_file)

POINT = "eval"  # the one point of an evaluation in its partial-results file


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "eval", "evaluate a decoder setting on a task", __doc__)
    p.add_argument("--task", default="arith", help="'arith' (its test split), 'arith:train', or a JSONL file with "
                                                    "'question' and 'answer' fields (default: arith)")
    p.add_argument("--turns", type=int, default=None, metavar="N",
                   help="built-in task: ask each question as the last of a conversation of N questions (the earlier "
                        "ones answered in the chat history; the same last questions as one turn)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples (default: all)")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                   help=f"prompts decoded together (default: {EVAL_BATCH_SIZE})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write summary, per-request records and environment to this JSON file (finished "
                        "batches are kept in FILE.partial: a rerun continues an interrupted run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_flags(p)
    add_decoder_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.errors import ConfigError
    from d3llm.eval.partial import PartialResults, discard, partial_path
    from d3llm.eval.runner import eval_plan, evaluate
    from d3llm.files import atomic_write_text, check_output_file
    from d3llm.tasks.data import load_dataset, with_turns

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    out = output_file(args.out)
    if out is not None:
        check_output_file(partial_path(out), "--out")
    folder = model_folder(args)
    dataset = load_dataset(with_turns(args.task, args.turns), default_split="test", scored=True)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)
    apply_threads(args.threads, model)
    tokenizer = d3llm.load_tokenizer(folder)
    params = decoder_params(args)
    settings = dict(batch_size=args.batch_size, limit=args.limit, seed=args.seed)
    partial = None
    if out is not None:  # finished batches are saved as they come; a rerun of the same command continues
        plan = eval_plan(model, folder, dataset, args.method, params, **settings)
        partial = PartialResults.open(partial_path(out), plan, "an unfinished evaluation")
    try:
        result = evaluate(model, tokenizer, dataset, args.method, params, **settings,
                          progress=not (args.no_progress or args.json),
                          resume_from=partial.batches(POINT) if partial else None,
                          save_batch=(lambda batch: partial.save_batch(POINT, batch)) if partial else None)
    except KeyboardInterrupt:
        if partial is None:
            raise
        raise partial.interrupted(plan["limit"]) from None
    if out is not None:
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2))
        discard(partial.path)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['dataset']}  {summary['method']}  n={summary['n']}  strict {summary['strict']:.2f}%  "
              f"flexible {summary['flexible']:.2f}%  TPF {summary['tpf']:.2f}  "
              f"{summary['positions_per_token']:.1f} positions/token  {summary['tokens_per_s']:.1f} tokens/s  "
              f"(NFE {summary['nfe']}, {summary['wall_s']:.2f} s)")
    return 0
