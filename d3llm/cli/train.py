"""d3llm train: masked-diffusion supervised fine-tuning (LLaDA guidelines) on the built-in task or a JSONL file, or
(--objective causal) next-token fine-tuning of a causal Llama model on the same data: the autoregressive baseline.

With the defaults it trains the shipped teacher of the built-in ``arith`` task from scratch::

    d3llm train --out runs/arith-teacher
    d3llm train --objective causal --out runs/arith-ar --eval-decode autoregressive    # the shipped AR baseline

Data-parallel: torchrun --nproc_per_node 2 -m d3llm.cli.main train --out ... (gloo on CPU, NCCL on GPU).
--resume continues from the newest checkpoint in ``OUT/checkpoints`` with the same data order; a changed --steps,
--lr, --warmup-steps, --min-lr-ratio, --weight-decay or --grad-clip needs --allow-schedule-change.
"""

from __future__ import annotations

import argparse
import json

from d3llm.errors import ConfigError


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set n_layers=6), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.training.config import SFT_OBJECTIVES, TrainConfig
    from d3llm.training.mixes import DEFAULT_CANVAS_MIX, DEFAULT_TURN_MIX

    d = TrainConfig(out="")
    from d3llm.cli.options import add_parser

    p = add_parser(sub, "train", "masked-diffusion fine-tuning (SFT) of a dLLM, or of its causal AR baseline", __doc__)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, train_log.jsonl, the final model")
    p.add_argument("--objective", default=d.objective, choices=list(SFT_OBJECTIVES),
                   help="; ".join(f"{k}: {v}" for k, v in SFT_OBJECTIVES.items()) + " (default: %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="'arith' (built-in task) or a JSONL file with question/answer "
                                                  "(default: %(default)s)")
    g.add_argument("--eval-data", default=None, help="held-out set (default: arith:test when training on arith)")
    g.add_argument("--train-size", type=int, default=None, help="use only the first N examples (file) / N problems")
    g.add_argument("--data-seed", type=int, default=d.data_seed, help="which built-in problems (default: %(default)s)")
    g.add_argument("--canvas-lengths", default=None, metavar="MIX",
                   help="canvas lengths of training rows (answer + EOS padding, the new tokens a decoder fills), "
                        "drawn once per step from this mix of LENGTH:WEIGHT pairs, each row taking the smallest "
                        "length that holds its answer, so the model decodes on any canvas (default: "
                        f"{DEFAULT_CANVAS_MIX}; a single value is a fixed length)")
    g.add_argument("--response-length", type=int, default=None,
                   help="a fixed canvas length instead of the mix (the old recipe), and the default new tokens "
                        "written into generation_config.json (default without it: 48)")
    g.add_argument("--turns", default=None, metavar="MIX",
                   help="built-in task: questions per training conversation (the earlier ones answered in the chat "
                        f"history), a mix like the canvas lengths' (default: {DEFAULT_TURN_MIX}; 1: single "
                        "questions only)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="a named config to train from scratch (llada-small, llama-small, "
                                                 "...) or a model folder (or shipped model name: teacher, student, ar) to fine-tune (default: llada-small, or "
                                                 "llama-small with --objective causal)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config.json field of a new model, e.g. --set n_layers=6 (repeatable)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder's, or the "
                                                     "built-in task tokenizer)")
    from d3llm.cli.loop_flags import add_checkpoint_flags, add_optimisation_flags, add_run_flags

    g = add_optimisation_flags(p, d, "initialisation and masking seed")
    g.add_argument("--eps", type=float, default=d.eps, help="minimum masking ratio (default: %(default)s)")
    g = add_checkpoint_flags(p, d)
    g.add_argument("--eval-size", type=int, default=d.eval_size, help="held-out examples for the eval loss "
                                                                      "(default: %(default)s)")
    g.add_argument("--eval-decode", default=None, metavar="METHOD",
                   help="also decode held-out answers with this method (e.g. vanilla, or autoregressive for "
                        "--objective causal) and report exact match")
    g.add_argument("--eval-decode-size", type=int, default=d.eval_decode_size,
                   help="examples decoded per evaluation (default: %(default)s)")
    add_run_flags(g, d)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from d3llm.assets import shipped_model
    from d3llm.training.config import TrainConfig
    from d3llm.training.trainer import train

    model = args.model or ("llama-small" if args.objective == "causal" else "llada-small")
    shipped = shipped_model(model)
    if shipped is not None and not Path(model).exists():  # a shipped model's name (a real path wins) fine-tunes it
        model = str(shipped.folder)
    cfg = TrainConfig(
        out=args.out, objective=args.objective, data=args.data, eval_data=args.eval_data, model=model,
        set=_parse_set(args.set),
        tokenizer=args.tokenizer, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, eps=args.eps, response_length=args.response_length, train_size=args.train_size,
        canvas_lengths=args.canvas_lengths, turns=args.turns,
        seed=args.seed, data_seed=args.data_seed, save_every=args.save_every, keep=args.keep,
        eval_every=args.eval_every, eval_size=args.eval_size, eval_decode=args.eval_decode,
        eval_decode_size=args.eval_decode_size, log_every=args.log_every, resume=args.resume,
        allow_schedule_change=args.allow_schedule_change, device=args.device,
        threads=args.threads, bf16=args.bf16, progress=args.progress,
    )
    train(cfg)
    return 0
