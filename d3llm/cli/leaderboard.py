"""``d3llm leaderboard``: every decoder, over its threshold or budget grid, on one or more models, on one AUP board.

    d3llm leaderboard --config benchmarks/leaderboard_arith.yaml --out runs/board     # the shipped teacher + student
    d3llm leaderboard --model runs/teacher --methods multi_block,eb_sampler --limit 100 --out runs/b
    d3llm leaderboard --results runs/a/sweep.json --results runs/b/sweep.json --out runs/ab  # no decoding

Decodes a sweep (as `d3llm sweep`: each model's one-token-per-forward point, then every point of every curve; the
same YAML config; resumable after Ctrl-C from OUT/sweep.json.partial) and writes, besides OUT/sweep.json, .md and
.png:

* OUT/leaderboard.yaml: task -> curve -> [[TPF, accuracy %], ...] in the layout of the reference's
  AUP_leaderboard/data_*.yaml (the points AUP counts), readable by `d3llm aup --yaml` and the reference's get_aup;
* OUT/leaderboard.md: per model, its curves by AUP, with the highest TPF within 1 point of the model's
  one-token-per-forward accuracy and, there, the positions forwarded per generated token and tokens/s; then which
  curves beat multi_block;
* OUT/leaderboard.png: accuracy against TPF, a panel per model.

Without --config or --methods, every sweepable method on its default grid (`d3llm sweep --help`). With --results,
the leaderboard of sweeps already run (their sweep.json files), decoding nothing.
"""

from __future__ import annotations

import argparse

from d3llm.cli.options import add_decoder_flags, add_parser
from d3llm.cli.sweep import add_sweep_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "leaderboard", "every decoder on one AUP leaderboard: reference YAML, table, plot", __doc__)
    add_sweep_flags(p, models="the shipped teacher and student", methods="every sweepable method")
    p.add_argument("--results", action="append", default=[], metavar="SWEEP.json",
                   help="build the leaderboard from these `d3llm sweep`/`leaderboard` results instead of decoding; "
                        "repeat for several")
    p.add_argument("--out", required=True, help="output folder for leaderboard.yaml, .md, .png (and the sweep's)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decoder_flags(p, method_flag=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from d3llm.cli.options import decoder_params
    from d3llm.cli.sweep import check_plotting, command_line, decode_sweep, sweep_config
    from d3llm.errors import ConfigError
    from d3llm.eval import leaderboard_report
    from d3llm.eval.sweep import SWEEPABLE, read_sweep_results
    from d3llm.files import check_output_file

    out = Path(args.out)
    paths = leaderboard_report.output_paths(out, png=not args.no_plot)
    command = command_line("leaderboard")
    if args.results:
        decoding = [flag for flag, given in (("--model", args.model), ("--config", args.config),
                                             ("--methods", args.methods), ("--thresholds", args.thresholds),
                                             ("--limit", args.limit), ("decoder flags", decoder_params(args)))
                    if given]
        if decoding:
            raise ConfigError(f"--results builds the leaderboard of finished sweeps; {', '.join(decoding)} would "
                              "decode: give one or the other")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out '{out}' is a file; expected a folder for the leaderboard's outputs")
        for path in paths.values():
            check_output_file(path)
        check_plotting(args.no_plot)
        runs = [read_sweep_results(r) for r in args.results]
    else:
        from d3llm.assets import default_model_path, student_model_path

        config = sweep_config(args, SWEEPABLE)
        shipped = [str(default_model_path()), str(student_model_path())]
        runs = [decode_sweep(args, config, out, default_models=shipped, command=command,
                             also_writes=list(paths.values()))[0]]
    written = leaderboard_report.write_outputs(runs, out, png=not args.no_plot, command=command)
    print(written["table"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0
