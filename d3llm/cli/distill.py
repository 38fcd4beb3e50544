"""``d3llm distill``: stage 2 of pseudo-trajectory distillation (SPEC 7), on the training loop of ``d3llm train``.

    d3llm distill --teacher DIR --trajectories runs/traj --out runs/student
    d3llm distill ... --random-mask              # ablation: naive random masking (SPEC 7.2)
    d3llm distill ... --fixed-noise 0.5          # ablation: no progressive noise
    d3llm distill ... --fixed-window 32          # ablation: no progressive window
    d3llm distill ... --lora --lora-r 8          # LoRA adapters, merged into the saved model
    torchrun --nproc_per_node 2 -m d3llm.cli.main distill ...                  # data parallel
    d3llm distill ... --resume                   # continue after an interruption (bit-exact)

The student starts from the teacher and is saved as a model folder of the same layout (config.json,
model.safetensors, the teacher's tokenizer, training.json).
"""

from __future__ import annotations

import argparse



def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block sizes such as 16,24,32, got {text!r}")
    if not sizes:
        raise argparse.ArgumentTypeError("expected at least one block size")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.distill.config import DistillConfig

    d = DistillConfig(out="")
    from d3llm.cli.options import add_parser

    p = add_parser(sub, "distill", "pseudo-trajectory distillation of a teacher into a faster student", __doc__)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, train_log.jsonl, the student")
    g = p.add_argument_group("teacher and data")
    g.add_argument("--teacher", default=None, help="teacher model folder or shipped model name; the student starts "
                                                   "from it (default: the shipped teacher)")
    g.add_argument("--trajectories", required=True,
                   help="folder written by 'd3llm trajectories extract', or several separated by commas (e.g. one "
                        "per canvas length: each step trains on one set, chosen in proportion to its size)")
    g.add_argument("--targets", choices=["teacher", "data"], default=d.targets,
                   help="train on the teacher's own outputs or on the source data's responses (default: %(default)s)")
    g.add_argument("--data", default=None, help="the source data (with --targets data)")
    g.add_argument("--response-length", type=int, default=None,
                   help="response columns incl. end-of-text padding (default: the trajectories' length)")
    g.add_argument("--keep-incorrect", action="store_true", help="also train on records the teacher got wrong")
    g = p.add_argument_group("masking and curricula (SPEC 7.2, 7.3)")
    g.add_argument("--window-sizes", type=_sizes, default=d.window_sizes,
                   help="block size per epoch, interpolated within epochs (default: %(default)s)")
    g.add_argument("--min-noise", type=float, default=d.min_noise, help="start of the noise lower bound "
                                                                        "(default: %(default)s)")
    g.add_argument("--max-noise", type=float, default=d.max_noise, help="upper mask ratio (default: %(default)s)")
    g.add_argument("--fixed-noise", type=float, default=None, metavar="T", help="ablation: always mask ratio T")
    g.add_argument("--fixed-window", type=int, default=None, metavar="B", help="ablation: always block size B")
    g.add_argument("--random-mask", action="store_true", help="ablation: naive random masking instead of the "
                                                              "teacher's trajectory")
    g.add_argument("--whole-response", action="store_true", help="mask the whole response as one block")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="examples sharing one mask ratio (default: the whole global batch)")
    g = p.add_argument_group("loss (SPEC 7.4)")
    g.add_argument("--no-complementary", dest="complementary", action="store_false",
                   help="drop the complementary pass")
    g.add_argument("--entropy-weight", type=float, default=None, help="weight of the entropy term (default: 2 for "
                                                                      "LLaDA, 1 for Dream)")
    g.add_argument("--entropy-temperature", type=float, default=d.entropy_temperature,
                   help="temperature of the entropy term (default: %(default)s)")
    g = p.add_argument_group("LoRA (merged into the saved model)")
    g.add_argument("--lora", action="store_true", help="train LoRA adapters instead of every weight")
    g.add_argument("--lora-r", type=int, default=d.lora_r, help="rank (default: %(default)s)")
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="scale alpha (default: %(default)s)")
    g.add_argument("--lora-targets", choices=["reference", "all"], default=d.lora_targets,
                   help="'reference': the reference's module list (on LLaDA only q/k/v/up_proj match); 'all': every "
                        "linear of a block by the family's real names (default: %(default)s)")
    from d3llm.cli.loop_flags import add_checkpoint_flags, add_optimisation_flags, add_run_flags

    add_optimisation_flags(p, d, "data order and noise seed")
    g = add_checkpoint_flags(p, d)
    g.add_argument("--eval-data", default=None, help="held-out problems (default: arith:test for arith "
                                                     "trajectories)")
    g.add_argument("--eval-size", type=int, default=d.eval_size, help="problems decoded per evaluation, 0 = none "
                                                                      "(default: %(default)s)")
    g.add_argument("--eval-block-size", type=int, default=None, help="multi_block block size of the evaluation "
                                                                     "(default: the generation length)")
    g.add_argument("--eval-threshold", type=float, default=d.eval_threshold,
                   help="multi_block entropy threshold of the evaluation (default: %(default)s)")
    g.add_argument("--eval-cache-delay", type=int, default=None, help="evaluate with the KV cache at this delay")
    add_run_flags(g, d)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.cli.options import teacher_folder
    from d3llm.distill.config import DistillConfig
    from d3llm.distill.objective import DistillationObjective
    from d3llm.training.trainer import train

    args.teacher = teacher_folder(args.teacher)
    fields = set(DistillConfig.__dataclass_fields__) - {"teacher_hash", "trajectories_hash"}
    cfg = DistillConfig(**{k: v for k, v in vars(args).items() if k in fields})
    train(cfg, DistillationObjective(cfg))
    return 0
