"""``OUT/report.md``: what a pipeline run made, from its record and its sweep's results.

Per stage its command and wall time; per swept model (the teacher and the student) its one-token-per-forward point
and its best curve by AUP (the sweep's own scoring: ``y_max`` the best point of the sweep, points below a curve's
floor not counted), the student's AUP over the teacher's, and a warning when a model answers fewer than
:data:`FEW_CORRECT` problems at its best point (its AUP is noise then). Every point is in the sweep's ``sweep.md``, the
curves in ``sweep.png``, the data in ``sweep.json``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from d3llm.files import atomic_write_text
from d3llm.pipeline.presets import Preset
from d3llm.pipeline.record import Record

FEW_CORRECT = 20  # fewer correct answers than this at a model's best point: its AUP is reported as noise


def model_summary(results: dict, label: str) -> dict:
    """The one-token-per-forward point and the best curve (by AUP) of the model ``label`` in sweep results."""
    from d3llm.eval.aup_metric import within_floor

    points, curves, scores = results["points"], results["curves"], results["aup"]["curves"]
    mine = {name: c for name, c in curves.items() if c["model"] == label}
    anchor = next(points[c["points"][0]] for c in mine.values())
    best = max(mine, key=lambda name: scores[name])
    pts = [(points[i]["tpf"], points[i]["accuracy"]) for i in mine[best]["points"]]
    kept = within_floor(pts) if any(acc > 0 for _, acc in pts) else pts
    return {"model": label, "accuracy": anchor["accuracy"], "tpf": anchor["tpf"], "best_curve": best,
            "aup": scores[best], "best_accuracy": max(acc for _, acc in pts),
            "top_tpf": max(tpf for tpf, _ in kept)}


def too_few_correct(models: list[dict], n: int) -> list[dict]:
    """The model summaries whose best point answers fewer than :data:`FEW_CORRECT` of the ``n`` problems."""
    return [m for m in models if m["best_accuracy"] * n / 100 < FEW_CORRECT]


def write_report(preset: Preset, out: Path, record: Record, wall_s: float) -> dict:
    """Write ``OUT/report.md``; return ``{"models": [summary, ...], "ratio": ..., "text": ..., "path": ...}``."""
    from d3llm.eval.sweep import read_sweep_results

    sweep = next(s for s in preset.stages if s.kind == "sweep")
    folder = out / sweep.output
    results = read_sweep_results(folder / "sweep.json")
    models = [model_summary(results, label) for label in results["models"]]
    by_name = {m["model"]: m for m in models}
    ratio = None
    if "teacher" in by_name and "student" in by_name and by_name["teacher"]["aup"] > 0:
        ratio = by_name["student"]["aup"] / by_name["teacher"]["aup"]
    lines = [f"# d3llm pipeline: preset {preset.name}", "",
             f"{preset.description} ({preset.family}); run folder `{out}`.", "",
             "| stage | command | wall time (s) |", "|---|---|---:|"]
    for stage in preset.stages:
        marker = record.done(stage.name) or {}
        lines.append(f"| {stage.name} | `{shlex.join(['d3llm', *stage.argv(str(out))])}` | "
                     f"{marker.get('wall_s', float('nan')):,.0f} |")
    total = sum((record.done(s.name) or {}).get("wall_s", 0.0) for s in preset.stages)
    lines += ["", f"Stages: {total:,.0f} s in all (a resumed stage counts its last run only); this invocation: "
                  f"{wall_s:,.0f} s.", "",
              f"Held out: {results['task']}, {results['n']} problems per point, accuracy = {results['metric']} "
              f"exact match, each curve anchored at its model's one-token-per-forward point, y_max "
              f"{results['aup']['y_max']:g}.", "",
              "| model | accuracy, one token per forward | its TPF | best curve | AUP | best accuracy on it | "
              "highest TPF within the floor |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for m in models:
        lines.append(f"| {m['model']} | {m['accuracy']:.1f}% | {m['tpf']:.2f} | {m['best_curve']} | {m['aup']:.1f} "
                     f"| {m['best_accuracy']:.1f}% | {m['top_tpf']:.2f} |")
    if ratio is not None:
        lines += ["", f"Student AUP / teacher AUP: **{ratio:.2f}x**."]
    elif "teacher" in by_name:
        lines += ["", "The teacher's AUP is 0 (no point answered correctly), so there is no ratio."]
    weak = too_few_correct(models, results["n"])
    if weak:
        names = ", ".join(f"the {m['model']} {m['best_accuracy']:.0f}%" for m in weak)
        lines += ["", f"**Too few correct answers to compare**: at its best point {names} of {results['n']} "
                      f"held-out problems (fewer than {FEW_CORRECT} answers right), so these AUPs and their ratio "
                      f"are noise, not a measured speed-up. The `default` preset repeats the shipped models' recipe, "
                      f"whose teacher solves the task."]
    lines += ["", f"Every point: `{folder / 'sweep.md'}`; the curves: `{folder / 'sweep.png'}`; the data: "
                  f"`{folder / 'sweep.json'}`."]
    text = "\n".join(lines) + "\n"
    path = out / "report.md"
    atomic_write_text(path, text)
    return {"models": models, "ratio": ratio, "text": text, "path": path, "sweep": folder}
