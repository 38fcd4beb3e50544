"""Command-line flags of the training loop, shared by ``d3llm train`` and ``d3llm distill`` (the loop's options are
:class:`d3llm.training.config.LoopConfig`)."""

from __future__ import annotations

import argparse


def add_optimisation_flags(parser: argparse.ArgumentParser, d, seed_help: str) -> argparse._ArgumentGroup:
    """The ``optimisation`` group (``d``: the command's config defaults); callers may add their own flags to it."""
    from d3llm.training.config import DEFAULT_WARMUP

    g = parser.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="cosine floor as a fraction of --lr; 1 = constant (default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up steps (default: {DEFAULT_WARMUP}, at most a tenth of --steps)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW (default: %(default)s)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm, 0 = off "
                                                                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"{seed_help} (default: %(default)s)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (for GPUs)")
    return g


def add_checkpoint_flags(parser: argparse.ArgumentParser, d) -> argparse._ArgumentGroup:
    """The ``checkpoints, evaluation, logging`` group; callers add their evaluation flags, then
    :func:`add_run_flags`."""
    g = parser.add_argument_group("checkpoints, evaluation, logging")
    g.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints "
                                                                        "(default: %(default)s)")
    g.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    g.add_argument("--allow-schedule-change", action="store_true",
                   help="with --resume: continue even though --steps, --lr, --warmup-steps, --min-lr-ratio, "
                        "--weight-decay or --grad-clip differ from the checkpoint's run (the new values apply from "
                        "the resumed step on; without this flag such a resume is refused)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations "
                                                                        "(default: %(default)s)")
    return g


def add_run_flags(g: argparse._ArgumentGroup, d) -> None:
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines "
                                                                      "(default: %(default)s)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: on a terminal)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's, one per "
                                                             "core; under torchrun, cores / processes)")
