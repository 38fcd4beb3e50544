"""``d3llm aup``: AUP leaderboards from the reference's YAML files or from our own sweep results.

    d3llm aup --yaml data_llada.yaml                 # Markdown table: AUP per task per method, average, rank
    d3llm aup --yaml data_llada.yaml --json          # {"tasks": {T: {M: AUP}}, "y_max": {T: Y}, "average": {M: A}}
    d3llm aup --yaml a.yaml --yaml b.yaml --reference-exact   # also the reference main.py's overall score
    d3llm aup runs/sweep/sweep.json runs/student/sweep.json   # curves of `d3llm sweep` runs, y_max across them

A leaderboard's methods are ranked by the mean of their AUP over the tasks they have. ``--reference-exact`` adds
the reference's own aggregation (AUP_leaderboard/main.py: the sum over every task of every file given, divided by 5,
a method in two files counted in both) as the average column.
"""

from __future__ import annotations

import argparse
import json

from d3llm.cli.options import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "aup", "AUP leaderboard of a YAML file or of sweep results", __doc__)
    p.add_argument("results", nargs="*", metavar="RESULTS.json", help="sweep results written by `d3llm sweep`")
    p.add_argument("--yaml", action="append", default=[], metavar="FILE",
                   help="a leaderboard in the reference's YAML layout (task -> method -> [[TPF, accuracy %%], ...]); "
                        "repeat for several files")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--reference-exact", action="store_true",
                   help="average as the reference's main.py does (sum over all files' tasks / 5)")
    p.add_argument("--alpha", type=float, default=3.0, help="penalty of the quality weight W (default 3)")
    p.add_argument("--y-min-offset", type=float, default=5.0,
                   help="floor in accuracy points below the lowest-TPF point (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.errors import ConfigError
    from d3llm.eval.leaderboards import leaderboard, read_leaderboard_yaml, reference_average
    from d3llm.eval.sweep import read_sweep_results, sweep_leaderboard

    if not args.results and not args.yaml:
        raise ConfigError("nothing to score: give sweep results (RESULTS.json) or --yaml FILE")
    options = dict(alpha=args.alpha, y_min_offset=args.y_min_offset)
    boards = [leaderboard(read_leaderboard_yaml(f), name=f, **options) for f in args.yaml]
    if args.results:
        runs = [read_sweep_results(f) for f in args.results]
        boards.append(sweep_leaderboard(runs, name=", ".join(args.results), **options))
    overall = reference_average(boards) if args.reference_exact else None

    if args.json:
        if len(boards) == 1:
            out = boards[0].to_json()
            if overall is not None:
                out["average"] = overall
        else:
            out = {"leaderboards": {b.name: b.to_json() for b in boards}}
            if overall is not None:
                out["average"] = overall
        print(json.dumps(out, indent=2))
        return 0
    for board in boards:
        print(f"## {board.name}\n")
        shown = overall if overall is not None and len(boards) == 1 else None
        print(board.to_markdown(average=shown) + "\n")
    if overall is not None and len(boards) > 1:
        print("## reference aggregation over all files (sum of AUP / 5)\n")
        print("| rank | method | score |\n|---:|---|---:|")
        for rank, method in enumerate(sorted(overall, key=lambda m: -overall[m]), start=1):
            print(f"| {rank} | {method} | {overall[method]:.2f} |")
    return 0
