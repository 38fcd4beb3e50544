"""The AUP of a ``d3llm leaderboard`` run against the reference's own ``get_aup`` on the same points.

``d3llm leaderboard --out DIR`` writes DIR/sweep.json (every measured point) and DIR/leaderboard.yaml (each curve's
points in the reference's YAML layout). This script scores every curve of the YAML with the reference's
``AUP_leaderboard/aup_utils.py::get_aup`` (``y_max`` per task = the best accuracy of any point in it, as the
reference's ``main.py`` computes it), scores the sweep with ours (:func:`d3llm.eval.leaderboard_report.summarize`,
the AUP of leaderboard.md), and records both and their largest difference. Nothing of the reference is stored in
this project: pass a checkout of hao-ai-lab/d3LLM (or a folder holding its ``aup_utils.py``).

    python benchmarks/leaderboard_vs_reference.py --reference ~/src/d3LLM runs/board \
        --out benchmarks/results/leaderboard_vs_reference.json

Exit status 0 when every curve agrees within ``--tolerance`` (default 0.01), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import yaml

from d3llm.eval.leaderboard_report import summarize
from d3llm.eval.sweep import read_sweep_results
from d3llm.files import atomic_write_text


def reference_get_aup(reference: Path):
    """``get_aup`` of the reference checkout (or folder) ``reference``."""
    for candidate in (reference / "AUP_leaderboard" / "aup_utils.py", reference / "aup_utils.py"):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("reference_aup_utils", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_aup, candidate
    sys.exit(f"{reference}: no AUP_leaderboard/aup_utils.py or aup_utils.py there; pass a hao-ai-lab/d3LLM checkout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("board", type=Path, help="the --out folder of `d3llm leaderboard`")
    parser.add_argument("--reference", type=Path, required=True, help="a hao-ai-lab/d3LLM checkout")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=None, help="write the comparison here (JSON)")
    args = parser.parse_args()

    get_aup, source = reference_get_aup(args.reference)
    data = yaml.safe_load((args.board / "leaderboard.yaml").read_text(encoding="utf-8"))
    ours = {(r.task, r.curve): r.aup for r in summarize([read_sweep_results(args.board / "sweep.json")])}
    curves = []
    for task, methods in data.items():
        y_max = max(y for pairs in methods.values() for _, y in pairs)
        for curve, pairs in methods.items():
            rho, acc = zip(*pairs)
            theirs = get_aup(list(rho), list(acc), y_max)
            curves.append({"task": task, "curve": curve, "points": len(pairs), "reference_aup": round(theirs, 6),
                           "d3llm_aup": round(ours[task, curve], 6),
                           "difference": round(abs(theirs - ours[task, curve]), 9)})
    missing = sorted(set(ours) - {(c["task"], c["curve"]) for c in curves})
    worst = max(c["difference"] for c in curves)
    ok = worst <= args.tolerance and not missing
    report = {"board": str(args.board), "reference": str(source), "curves": curves, "max_difference": worst,
              "tolerance": args.tolerance, "missing_from_yaml": [list(m) for m in missing], "agree": ok}
    for c in curves:
        print(f"{c['curve']:45s} reference {c['reference_aup']:10.4f}  d3llm {c['d3llm_aup']:10.4f}")
    print(f"{len(curves)} curves, largest difference {worst:.3g} (tolerance {args.tolerance}): "
          f"{'agree' if ok else 'DISAGREE'}" + (f"; missing from the YAML: {missing}" if missing else ""))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
