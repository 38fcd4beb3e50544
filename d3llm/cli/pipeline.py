"""``d3llm pipeline``: from nothing to a distilled student in one command. Trains a teacher on the built-in task
(d3llm train), extracts its trajectories (d3llm trajectories extract), distills the student (d3llm distill) and
sweeps both (d3llm sweep), each stage writing into its folder of --out, with its own progress bars:

    d3llm pipeline --preset tiny --out runs/p       # at most 15 minutes on 2 CPU cores
    d3llm pipeline --out runs/full                  # the shipped models' recipe: about 2.5 hours on 2 cores
    d3llm pipeline --preset tiny --family dream --out runs/pd --threads 2

OUT/teacher, OUT/trajectories, OUT/student (OUT/teacher-base and three trajectory sets with the default preset),
OUT/sweep (sweep.md, sweep.png, sweep.json: the AUP report), OUT/report.md (each stage's command and time, the
teacher's and the student's accuracy, tokens per forward and AUP) and OUT/pipeline.json (the settings and a done
marker per finished stage).

Run the same command again to continue: finished stages are verified (their files unchanged, the model loads, the
trajectories pass their checksums) and skipped; an interrupted training or distillation resumes from its last
checkpoint, an interrupted extraction keeps its finished shards. Other settings in the same folder are refused.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from d3llm.cli.options import add_parser
    from d3llm.pipeline.presets import FAMILIES, PRESETS

    p = add_parser(sub, "pipeline", "train a teacher, extract, distill a student and sweep both, in one command",
                   __doc__)
    p.add_argument("--out", required=True, help="the run folder (every stage's output, the report)")
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="tiny: a small teacher and student on the task's one-step problems, at most 15 minutes on 2 "
                        "CPU cores; default: the shipped models' recipe from their model cards, about 2.5 hours on 2 "
                        "CPU cores (default: %(default)s)")
    p.add_argument("--family", default="llada", choices=list(FAMILIES),
                   help="architecture of the teacher trained from scratch (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads of every stage (default: each command's own default)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the stages' progress bars on or off (default: on a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.errors import ConfigError
    from d3llm.pipeline import PRESETS, run_pipeline

    if args.threads is not None and args.threads <= 0:
        raise ConfigError(f"--threads must be a positive number of threads, got {args.threads}")
    run_pipeline(PRESETS[args.preset](args.family), args.out, threads=args.threads, progress=args.progress)
    return 0
