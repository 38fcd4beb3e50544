"""The decoder leaderboard of one or more sweeps: the reference's YAML, a summary table and a plot per model.

``d3llm leaderboard`` decodes a sweep (:mod:`d3llm.eval.sweep`: every method over its threshold or budget grid, on
every model, each curve starting at its model's one-token-per-forward point) and reports it three ways:

* ``leaderboard.yaml``: task -> curve -> ``[[TPF, accuracy %], ...]``, the layout of the reference's
  ``AUP_leaderboard/data_*.yaml`` files. Only the points AUP counts are written (those at most 5 points below the
  curve's lowest-TPF point, sorted by TPF), so the reference's ``get_aup``, which refuses a curve whose last point lies
  below that floor, reads every curve, and ``y_max`` (the best accuracy in the task) is the same as ours;
* ``leaderboard.md``: per model, one row per curve, best AUP first: AUP, the highest accuracy, the highest TPF whose
  accuracy is within 1 point of the model's one-token-per-forward accuracy (the operating point a user would pick),
  and at that point the **positions forwarded per generated token** (the compute TPF hides: a forward of the whole
  canvas costs more than a forward of one block) and tokens/s; then which curves beat ``multi_block`` on AUP;
* ``leaderboard.png``: accuracy against TPF, one panel per model, one color per curve, AUP in the legend.

TPF counts the tokens generated before end-of-text, so a one-token-per-forward decode of answers shorter than the
canvas has a TPF below 1 (its forwards over end-of-text padding are counted, not its padding).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from d3llm.eval.aup_metric import within_floor
from d3llm.files import atomic_write, atomic_write_text, make_folder

TOLERANCE_POINTS = 1.0  # "within 1 point of the one-token-per-forward accuracy"
REFERENCE_METHOD = "multi_block"  # d3LLM's decoder: the curve the zoo is compared against


@dataclass
class CurveSummary:
    """One row of the leaderboard table.

    ``operating`` is the point record (see :func:`d3llm.eval.sweep.run_sweep`) of the highest TPF whose accuracy is
    at least the model's one-token-per-forward accuracy less :data:`TOLERANCE_POINTS` (None: no point of the curve
    beyond its anchor is).
    """

    task: str
    model: str
    curve: str
    method: str
    aup: float
    max_accuracy: float
    anchor_accuracy: float
    operating: dict | None
    below_floor: int
    baseline: bool


def summarize(runs: Sequence[dict]) -> list[CurveSummary]:
    """A :class:`CurveSummary` per curve of the sweeps ``runs`` (AUP with ``y_max`` over every curve of the task)."""
    from d3llm.eval.sweep import sweep_curves, sweep_leaderboard

    board = sweep_leaderboard(list(runs))
    rows = []
    for task, label, _, pts in sweep_curves(runs):
        anchor, rest = pts[0], pts[1:]
        good = [p for p in rest if p["accuracy"] >= anchor["accuracy"] - TOLERANCE_POINTS]
        rows.append(CurveSummary(
            task=task, model=str(anchor["model"]), curve=label, method=str((rest or pts)[0]["method"]),
            aup=board.tasks[task][label], max_accuracy=max(p["accuracy"] for p in pts),
            anchor_accuracy=anchor["accuracy"], operating=max(good, key=lambda p: p["tpf"]) if good else None,
            below_floor=board.dropped.get(task, {}).get(label, 0), baseline=not rest))
    return rows


def reference_yaml_data(runs: Sequence[dict]) -> dict[str, dict[str, list[list[float]]]]:
    """``{task: {curve: [[TPF, accuracy %], ...]}}``: each curve's points within its AUP floor, sorted by TPF.

    A curve with no correct answer scores 0 and keeps its points of positive TPF; a model that wrote nothing (TPF 0,
    which AUP and the reference refuse) has no curve here."""
    from d3llm.eval.sweep import sweep_leaderboard_data

    out: dict[str, dict[str, list[list[float]]]] = {}
    for task, curves in sweep_leaderboard_data(runs).items():
        for label, pts in curves.items():
            pts = [(x, y) for x, y in pts if x > 0]
            if not pts:
                continue
            kept = within_floor(pts) if any(y > 0 for _, y in pts) else sorted(pts)
            out.setdefault(task, {})[label] = [[float(x), float(y)] for x, y in kept]
    return out


def reference_yaml(runs: Sequence[dict], command: str = "") -> str:
    """:func:`reference_yaml_data` as YAML text, with a header saying where it came from."""
    import yaml

    header = ["# AUP leaderboard data in the layout of hao-ai-lab/d3LLM's AUP_leaderboard/data_*.yaml:",
              "# task -> method -> list of [TPF (tokens per forward), accuracy %], the points AUP counts.",
              "# Score it with `d3llm aup --yaml FILE` (or the reference's get_aup, y_max = the task's best accuracy)."]
    if command:
        header.append(f"# written by: {command}")
    body = yaml.safe_dump(reference_yaml_data(runs), sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(header) + "\n" + body


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def markdown(runs: Sequence[dict]) -> str:
    """The leaderboard table: per task and model, its curves best AUP first, then the curves that beat
    ``multi_block``'s AUP (with how much less compute per token they spend at their operating point, if less)."""
    rows = summarize(runs)
    lines: list[str] = []
    for task in dict.fromkeys(r.task for r in rows):
        for model in dict.fromkeys(r.model for r in rows if r.task == task):
            mine = sorted((r for r in rows if r.task == task and r.model == model), key=lambda r: -r.aup)
            anchor = next((r for r in mine if r.baseline), mine[0])
            n = next(run["n"] for run in runs if str(run["task"]) == task)
            lines += [f"### {model} on {task} ({n} problems; one token per forward: {anchor.anchor_accuracy:.2f}%)",
                      "",
                      "| rank | curve | AUP | max accuracy % | TPF within 1 pt (threshold) | accuracy % there | "
                      "positions/token there | tokens/s there | below floor |",
                      "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
            for rank, r in enumerate(mine, start=1):
                op = r.operating
                if op is None:
                    cells = ["–", "–", "–", "–"]
                else:
                    threshold = "" if op["threshold"] is None else f" ({op['threshold']:g})"
                    positions = op.get("positions_per_token") or 0
                    cells = [f"{op['tpf']:.2f}{threshold}", _num(op["accuracy"]),
                             f"{positions:.1f}" if positions else "–", f"{op['tokens_per_s']:,.0f}"]
                lines.append(f"| {rank} | {r.curve} | {_num(r.aup)} | {_num(r.max_accuracy)} | "
                             + " | ".join(cells) + f" | {r.below_floor or ''} |")
            lines += ["", _versus_reference(mine), ""]
    return "\n".join(lines).rstrip() + "\n"


def _versus_reference(rows: list[CurveSummary]) -> str:
    ref = next((r for r in rows if r.method == REFERENCE_METHOD and not r.baseline), None)
    if ref is None:
        return f"(no {REFERENCE_METHOD} curve to compare with)"
    better = [r for r in rows if r.aup > ref.aup and r is not ref and not r.baseline]
    if not better:
        return f"No curve beats {ref.curve} (AUP {ref.aup:.2f})."
    ref_cost = (ref.operating or {}).get("positions_per_token") or 0

    def cost(r: CurveSummary) -> str:
        positions = (r.operating or {}).get("positions_per_token") or 0
        if not positions:
            return "no operating point within 1 pt"
        return f"{positions:.1f} positions/token" + (f" vs {ref_cost:.1f}" if ref_cost else "")

    return f"Beat {ref.curve} (AUP {ref.aup:.2f}): " + "; ".join(
        f"{r.curve} (AUP {r.aup:.2f}, {cost(r)})" for r in better) + "."


def plot(runs: Sequence[dict], path: str | os.PathLike) -> None:
    """Accuracy against TPF: one panel per (task, model), one line per curve (the anchor a star), AUP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from d3llm.eval.sweep import sweep_curves

    rows = {(r.task, r.curve): r for r in summarize(runs)}
    panels: dict[tuple[str, str], list] = {}
    for task, label, _, pts in sweep_curves(runs):
        panels.setdefault((task, str(pts[0]["model"])), []).append((label, pts))
    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[0::2] + tab20[1::2]  # the ten strong colors first, then their light pairs
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.2), squeeze=False)
    for ax, ((task, model), curves) in zip(axes[0], panels.items()):
        accs = []
        for k, (label, pts) in enumerate(curves):
            xy = sorted((p["tpf"], p["accuracy"]) for p in pts)
            accs += [y for _, y in xy]
            name = f"{label.removeprefix(model + ' ')}: {rows[task, label].aup:.1f}"
            if len(xy) == 1:
                ax.scatter(*xy[0], marker="*", s=260, color="black", zorder=5, label=name)
            else:
                ax.plot(*zip(*xy), marker="o", markersize=3.5, color=colors[k % len(colors)], linewidth=1.4,
                        label=name)
        ax.set_xlim(left=0)
        ax.set_ylim(max(0.0, min(accs) - 3), min(101.0, max(accs) + 1.5))
        ax.set_xlabel("tokens per forward (TPF)")
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"{model} on {task}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", title="curve: AUP", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def output_paths(out_dir: str | os.PathLike, *, png: bool = True) -> dict[str, Path]:
    """``leaderboard.yaml``, ``leaderboard.md`` and (``png``) ``leaderboard.png`` in ``out_dir``."""
    out = Path(out_dir)
    paths = {"yaml": out / "leaderboard.yaml", "table": out / "leaderboard.md"}
    if png:
        paths["png"] = out / "leaderboard.png"
    return paths


def write_outputs(runs: Sequence[dict], out_dir: str | os.PathLike, *, png: bool = True,
                  command: str = "") -> dict[str, Path]:
    """Write the leaderboard's YAML, table and plot into ``out_dir`` (atomically); return their paths."""
    paths = output_paths(make_folder(out_dir), png=png)
    atomic_write_text(paths["yaml"], reference_yaml(runs, command))
    header = f"Written by `{command}`.\n\n" if command else ""
    atomic_write_text(paths["table"], header + markdown(runs))
    if png:
        atomic_write(paths["png"], lambda p: plot(runs, p))
    return paths
