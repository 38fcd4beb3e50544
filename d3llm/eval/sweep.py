"""Threshold sweeps: the accuracy-parallelism curve of every model x method, with AUP (SPEC 8, 9).

A sweep decodes the same problems once per point:

* per model, its **one-token-per-forward point** (``vanilla`` with ``steps == max_new_tokens``; for a causal model,
  ``autoregressive``, its only point: the swept methods are diffusion decoders), measured once.
  Every curve of that model starts there, as every row of the reference's leaderboard files starts at TPF 1, so a
  curve cannot score by anchoring AUP's floor at a low accuracy;
* per model, method and threshold, one point.

Each point records accuracy (strict exact match by default), TPF (generated tokens before end-of-text per forward;
prompts and padding never count), tokens/s, per-request latency p50/p99 (the wall time of the ``generate`` call
that served the request), NFE and the fully resolved decoder settings. A warm-up decode of a few rows per (model, method) runs
first and is not measured. Curves are scored by :func:`d3llm.eval.leaderboard` with ``y_max`` the best point
of the whole sweep; points below a curve's floor are shown but not counted (``below floor``). With ``resume``,
finished points and batches are kept as they come and a rerun continues from them (:mod:`d3llm.eval.partial`).

The configuration file (YAML)::

    task: arith            # the built-in task's test split, or a JSONL file with question/answer
    limit: 200             # problems per point
    batch_size: 50
    metric: strict         # strict (#### N) or flexible (last number)
    decoder:               # shared by every point, the one-token-per-forward point included; anything not
      max_new_tokens: 48   # set here or under methods comes from the model folder's generation_config.json
      block_size: 16
    methods:
      fast_dllm:
        threshold: [0.95, 0.9, 0.7, 0.5]
        cache: dual        # any other parameter of the method, fixed along the curve
      multi_block:
        threshold: [0.05, 0.2, 1.0]
        block_add_threshold: 0.1
      fast_dllm_factor:    # the swept values of fast_dllm_factor are its factor (threshold: or factor:)
        factor: [0.5, 1.0, 2.0]
      multi_block no cache:  # a second curve of one method: name it and say which method
        method: multi_block
        threshold: [0.05, 0.2, 1.0]
        cache_delay_iter: null
      multi_block + exit:  # a curve over another parameter: say which (swept), its values under its name
        method: multi_block
        early_exit: sched
        exit_low: 10
        swept: exit_high
        exit_high: [40, 25, 15]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d3llm.errors import ConfigError, D3LLMError, did_you_mean
from d3llm.files import atomic_write, atomic_write_text, make_folder, read_json

BASELINE = "vanilla"
CAUSAL_BASELINE = "autoregressive"  # the one-token-per-forward point of a causal (autoregressive) model
SWEEPABLE = ("fast_dllm", "block_entropy", "multi_block", "eb_sampler", "fast_dllm_factor", "hierarchy", "local_leap",
             "credit", "klass", "adablock")
DEFAULT_METHODS = ("fast_dllm", "block_entropy", "multi_block")  # a sweep without --methods
DEFAULT_THRESHOLDS = {
    "fast_dllm": [0.95, 0.9, 0.7, 0.5, 0.3, 0.1],   # confidence
    "block_entropy": [0.05, 0.2, 0.5, 1.0, 2.0, 4.0],  # entropy
    "multi_block": [0.05, 0.2, 0.5, 1.0, 2.0, 4.0],    # entropy
    "eb_sampler": [0.001, 0.01, 0.1, 0.3, 1.0, 3.0],   # entropy budget
    "fast_dllm_factor": [0.1, 0.5, 1.0, 2.0, 4.0, 8.0],  # the factor f
    "hierarchy": [0.95, 0.9, 0.7, 0.5, 0.3, 0.1],   # confidence
    "local_leap": [0.95, 0.9, 0.7, 0.5, 0.3, 0.1],  # the anchors' confidence
    "credit": [0.95, 0.9, 0.7, 0.5, 0.3, 0.1],      # confidence of the credit-fused logits
    "klass": [0.9, 0.8, 0.6, 0.4, 0.2, 0.0],        # the confidence a stable position needs
    "adablock": [0.95, 0.9, 0.7, 0.5, 0.3, 0.1],    # confidence, in delimiter-ended blocks
}
# the parameter a curve's "threshold" values set, where it is not the method's threshold
SWEPT_PARAMETER = {"fast_dllm_factor": "factor"}
METRICS = ("strict", "flexible")
CONFIG_KEYS = ("task", "limit", "batch_size", "seed", "metric", "decoder", "methods")
RESULTS_KIND = "d3llm-sweep"


@dataclass
class MethodGrid:
    """One curve: a method, its thresholds and the parameters fixed along it; ``name`` labels the curve (the
    method's name unless the config gives several curves of one method)."""

    method: str
    thresholds: list[float]
    params: dict = field(default_factory=dict)
    name: str = ""
    swept: str = ""  # the parameter the values set: the method's (SWEPT_PARAMETER, else threshold) by default

    def __post_init__(self) -> None:
        self.name = self.name or self.method
        self.swept = self.swept or SWEPT_PARAMETER.get(self.method, "threshold")


@dataclass
class SweepConfig:
    """What to sweep (see the module docstring for the YAML layout)."""

    methods: list[MethodGrid]
    task: str = "arith"
    limit: int | None = None
    batch_size: int = 50
    seed: int | None = None
    metric: str = "strict"
    decoder: dict = field(default_factory=dict)
    source: str = "sweep settings"

    @classmethod
    def default(cls, methods: Sequence[str] = DEFAULT_METHODS, thresholds: Sequence[float] | None = None, **kw):
        for method in methods:
            _check_method(method, "--methods", "the command line")
        grids = [MethodGrid(m, list(thresholds) if thresholds else list(DEFAULT_THRESHOLDS[m])) for m in methods]
        return cls(methods=grids, **kw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SweepConfig:
        from d3llm.eval.yaml_file import read_yaml

        file = Path(path).expanduser()
        data = read_yaml(file, "sweep file", "a YAML file with 'methods' (see `d3llm sweep --help`)")
        return cls.from_dict(data, source=str(file))

    @classmethod
    def from_dict(cls, data, source: str = "sweep settings") -> SweepConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping with keys {list(CONFIG_KEYS)}, got {data!r}")
        unknown = sorted(set(data) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {list(CONFIG_KEYS)}")
        if "methods" not in data:
            raise ConfigError(f"{source}: key 'methods' is missing; expected method -> {{threshold: [...], ...}} "
                              f"for some of {list(SWEEPABLE)}")
        methods = data["methods"]
        if not isinstance(methods, Mapping) or not methods:
            raise ConfigError(f"{source}: 'methods' must map method names to their settings, got {methods!r}")
        grids = []
        for name, settings in methods.items():
            settings = {} if settings is None else settings
            if not isinstance(settings, Mapping):
                raise ConfigError(f"{source}: methods.{name}: expected a mapping of parameters, got {settings!r}")
            settings = dict(settings)
            method = settings.pop("method", name)
            _check_method(method, f"methods.{name}" + (".method" if method != name else ""), source,
                          exits=settings.get("early_exit") is not None)
            swept = settings.pop("swept", None)
            if swept is not None:
                if not isinstance(swept, str) or swept in ("method", "threshold") or swept not in settings:
                    raise ConfigError(f"{source}: methods.{name}.swept names the parameter the curve's values set "
                                      f"(e.g. swept: exit_high with exit_high: [40, 25, 15]); got {swept!r}, which "
                                      f"{'has no list of values there' if isinstance(swept, str) else 'is not a name'}")
                if "threshold" in settings and isinstance(settings["threshold"], list):
                    raise ConfigError(f"{source}: methods.{name}: the curve sweeps '{swept}'; give one threshold, "
                                      "not a list")
            else:
                swept = SWEPT_PARAMETER.get(method)
                if swept in settings and "threshold" in settings:
                    raise ConfigError(f"{source}: methods.{name}: give the swept values as 'threshold' or as "
                                      f"'{swept}', not both")
            swept = swept if swept in settings else "threshold"
            if swept not in settings and method not in DEFAULT_THRESHOLDS:
                raise ConfigError(f"{source}: methods.{name}: {method} has no default grid; give the curve's values "
                                  "(swept: NAME and NAME: [...])")
            thresholds = settings.pop(swept, DEFAULT_THRESHOLDS.get(method))
            if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
                thresholds = [thresholds]
            if (not isinstance(thresholds, list) or not thresholds
                    or any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in thresholds)):
                raise ConfigError(f"{source}: methods.{name}.threshold must be a number or a non-empty list of "
                                  f"numbers, got {thresholds!r}")
            grids.append(MethodGrid(str(method), [float(t) for t in thresholds], settings, name=str(name),
                                    swept=swept))
        decoder = data.get("decoder") or {}
        if not isinstance(decoder, Mapping):
            raise ConfigError(f"{source}: 'decoder' must be a mapping of decoder parameters, got {decoder!r}")
        if "threshold" in decoder:
            raise ConfigError(f"{source}: decoder.threshold: thresholds are swept per method "
                              "(methods.METHOD.threshold), not shared")
        kw = {}
        for key, kind, minimum in (("limit", int, 1), ("batch_size", int, 1), ("seed", int, 0)):
            if data.get(key) is not None:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
                    raise ConfigError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
                kw[key] = value
        metric = data.get("metric", "strict")
        if metric not in METRICS:
            raise ConfigError(f"{source}: metric must be one of {list(METRICS)}, got {metric!r}")
        task = data.get("task", "arith")
        if not isinstance(task, str) or not task:
            raise ConfigError(f"{source}: task must be 'arith' or a JSONL path, got {task!r}")
        return cls(methods=grids, task=task, metric=metric, decoder=dict(decoder), source=source, **kw)

    def settings(self, model, tokenizer=None) -> list[tuple[str, str, float | None, dict]]:
        """(curve, method, threshold, parameters) of every point for ``model``, the one-token-per-forward point
        first (curve None).

        Parameters not set by the sweep come from the model folder's ``generation_config.json``, then the method's
        defaults, as in ``d3llm.generate``; every point is resolved here, so a bad value fails before any decoding
        (the error names the config key).
        """
        from d3llm.decoding.defaults import resolve_decoder

        def resolve(method: str, params: dict, key: str) -> dict:
            from d3llm.decoding.defaults import with_tokenizer_defaults

            params.update(with_tokenizer_defaults(model, method, params, tokenizer))
            try:
                return dict(vars(resolve_decoder(model, method, params)[2]))
            except D3LLMError as exc:
                raise ConfigError(f"{self.source}: {key}: {exc}") from None

        if getattr(model, "causal", False):  # one point; of the shared settings, those the AR decoder takes
            from d3llm.decoding.methods import METHODS

            names = {*METHODS[CAUSAL_BASELINE].Params.names(), "gen_length"}
            params = {k: v for k, v in self.decoder.items() if k in names}
            resolve(CAUSAL_BASELINE, params, "decoder (a causal model: autoregressive)")
            return [(None, CAUSAL_BASELINE, None, params)]
        gen = resolve(BASELINE, dict(self.decoder), "decoder")["max_new_tokens"]
        one_per_forward = {k: v for k, v in self.decoder.items() if k != "gen_length"}
        one_per_forward.update(max_new_tokens=gen, steps=gen)
        resolve(BASELINE, one_per_forward, "decoder (one token per forward: vanilla, steps = max_new_tokens)")
        points = [(None, BASELINE, None, one_per_forward)]
        for grid in self.methods:
            for t in grid.thresholds:
                params = {**self.decoder, **grid.params, grid.swept: t}
                resolve(grid.method, params, f"methods.{grid.name}")
                points.append((grid.name, grid.method, t, params))
        return points

    def to_dict(self) -> dict:
        return {"task": self.task, "limit": self.limit, "batch_size": self.batch_size, "seed": self.seed,
                "metric": self.metric, "decoder": self.decoder,
                "methods": {g.name: {**({"method": g.method} if g.name != g.method else {}),
                                     **({"swept": g.swept, g.swept: g.thresholds}
                                        if g.swept != SWEPT_PARAMETER.get(g.method, "threshold")
                                        else {"threshold": g.thresholds}),
                                     **g.params} for g in self.methods}}


def _check_method(method, key: str, source: str, exits: bool = False) -> None:
    """A curve's method is sweepable; ``vanilla`` too when the curve sets an early exit (its one-token-per-forward
    point is measured anyway, an exit makes another decoder of it)."""
    if method == BASELINE and exits:
        return
    if method not in SWEEPABLE:
        hint = did_you_mean(method, SWEEPABLE)
        extra = "; the one-token-per-forward vanilla point is measured for every model anyway" \
            if method == BASELINE else ""
        raise ConfigError(f"{source}: {key}: unknown method {method!r}{hint}; a sweep takes some of "
                          f"{list(SWEEPABLE)}{extra}")


def _model_labels(folders: Sequence[str]) -> list[str]:
    labels: list[str] = []
    for folder in folders:
        name = Path(folder).resolve().name or str(folder)
        label, k = name, 2
        while label in labels:
            label, k = f"{name}#{k}", k + 1
        labels.append(label)
    return labels


def sweep_plan(loaded: Sequence[tuple], config: SweepConfig, dataset, n: int) -> dict:
    """Every setting a sweep's figures depend on, as a resumed sweep compares them: the models
    (:func:`d3llm.eval.runner.model_identity`), the task and a hash of its questions, the number of problems, and the
    configuration (batch size, seed, metric, shared decoder settings, curves)."""
    from d3llm.eval.runner import model_identity, questions_key

    return {**config.to_dict(), "task": getattr(dataset, "name", config.task), "limit": n,
            "questions": questions_key(dataset),
            "models": [model_identity(model, folder) for folder, _, model, *_ in loaded]}


def _point(label: str, curve, method: str, threshold, result, metric: str) -> dict:
    """A point of ``sweep.json`` from its :class:`~d3llm.eval.runner.EvalResult`."""
    latencies = np.array([r.batch_wall_s for r in result.records])
    return {
        "model": label, "curve": curve, "method": method, "threshold": threshold, "baseline": curve is None,
        "accuracy": round(result.strict if metric == "strict" else result.flexible, 4),
        "strict": round(result.strict, 4), "flexible": round(result.flexible, 4),
        "tpf": round(result.tpf, 4), "positions_per_token": round(result.positions_per_token, 2),
        "tokens_per_s": round(result.tokens_per_s, 1), "latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 4),
        "nfe": result.nfe, "tokens": result.tokens, "n": result.n, "wall_s": round(result.wall_s, 3),
        "model_s": round(result.model_s, 3), "batch_size": result.batch_size, "params": result.params,
    }


def run_sweep(models: Sequence[str], config: SweepConfig, *, device=None, dtype=None, progress: bool = True,
              command: str = "", on_load=None, resume: str | os.PathLike | None = None) -> dict:
    """Decode every point of ``config`` for every model folder; return the results (see :func:`write_outputs`).

    Every model folder, the dataset and every point's parameters are checked before any decoding. ``on_load(model)``
    is called after each model is loaded (the CLI sets the thread count there). ``resume``: a partial-results file
    (:mod:`d3llm.eval.partial`) where every finished batch and point is saved as it comes, and from which a rerun
    with the same settings continues (the caller removes it once the outputs are written); a Ctrl-C then raises a
    ``KeyboardInterrupt`` saying what is kept.
    """
    import d3llm
    from d3llm.eval.environment import environment
    from d3llm.eval.partial import PartialResults
    from d3llm.eval.progress import ProblemBar
    from d3llm.eval.runner import evaluate
    from d3llm.tasks.data import load_dataset

    if not models:
        raise ConfigError("no model to sweep; pass --model DIR (repeat for several)")
    for folder in models:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(f"model folder '{folder}' does not exist (--model); expected a folder with config.json "
                              "and model.safetensors")
    dataset = load_dataset(config.task, default_split="test")
    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    loaded = []
    for folder, label in zip(models, _model_labels(models)):
        model = d3llm.load_model(folder, device=device, dtype=dtype)
        if on_load is not None:
            on_load(model)
        tokenizer = d3llm.load_tokenizer(folder)
        loaded.append((folder, label, model, tokenizer, config.settings(model, tokenizer)))
    partial = None if resume is None else PartialResults.open(resume, sweep_plan(loaded, config, dataset, n),
                                                              "an unfinished sweep")

    total = sum(len(s) for *_, s in loaded) * n
    bar = ProblemBar(total, "sweep", done=partial.saved_rows() if partial else 0) if progress else None
    batches_per_point = -(-n // config.batch_size)
    t0 = time.perf_counter()
    points, curves, stamps = [], {}, {}
    try:
        for m, (folder, label, model, tokenizer, settings) in enumerate(loaded):
            stamps[label] = {"path": str(folder), "environment": environment(model)}
            warmed: set[str] = set()
            for k, (curve, method, threshold, params) in enumerate(settings):
                point = f"{m}.{k}"  # the k-th point of the m-th model: stable for a plan
                if partial is not None and point in partial.points:
                    points.append(partial.points[point])
                    continue
                if bar is not None:
                    bar.describe(f"{label} {curve or method}" + ("" if threshold is None else f" @ {threshold:g}"))
                saved = partial.batches(point) if partial is not None else {}
                result = evaluate(model, tokenizer, dataset, method, params, batch_size=config.batch_size, limit=n,
                                  seed=config.seed, warmup=method not in warmed, progress=bar or False,
                                  resume_from=saved,
                                  save_batch=(lambda b, p=point: partial.save_batch(p, b)) if partial else None)
                if len(saved) < batches_per_point:  # something was decoded, after a warm-up
                    warmed.add(method)
                points.append(_point(label, curve, method, threshold, result, config.metric))
                if partial is not None:
                    partial.save_point(point, points[-1])
            base = next(i for i, p in enumerate(points) if p["model"] == label and p["baseline"])
            first = points[base]["method"]
            curves[f"{label} {first} (1 token/forward)"] = {"model": label, "method": first, "points": [base]}
            for grid in config.methods:
                mine = [i for i, p in enumerate(points) if p["model"] == label and p["curve"] == grid.name]
                if mine:  # a causal model has no diffusion curves
                    curves[f"{label} {grid.name}"] = {"model": label, "method": grid.method, "points": [base, *mine]}
    except KeyboardInterrupt:
        if partial is None:
            raise
        raise partial.interrupted(total) from None
    finally:
        if bar is not None:
            bar.close()
    results = {"kind": RESULTS_KIND, "task": getattr(dataset, "name", config.task), "n": n,
               "metric": config.metric, "config": config.to_dict(), "command": command,
               "elapsed_s": round(time.perf_counter() - t0, 1), "models": stamps, "points": points, "curves": curves,
               "environment": stamps[loaded[0][1]]["environment"]}
    board = sweep_leaderboard(results)
    results["aup"] = {"y_max": board.y_max[results["task"]], "curves": board.tasks[results["task"]],
                      "below_floor": board.dropped.get(results["task"], {})}
    return results


# ---------------------------------------------------------------------------------------------------------------
# results files -> leaderboards
# ---------------------------------------------------------------------------------------------------------------

def read_sweep_results(path: str | os.PathLike) -> dict:
    """Read a ``sweep.json`` written by ``d3llm sweep`` (errors name the file and the missing key)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"sweep results '{file}' do not exist; expected the sweep.json that `d3llm sweep` writes")
    data = read_json(file, ConfigError)
    if not isinstance(data, dict) or data.get("kind") != RESULTS_KIND:
        raise ConfigError(f"{file}: not the results of `d3llm sweep` (expected \"kind\": \"{RESULTS_KIND}\")")
    for key in ("task", "points", "curves"):
        if key not in data:
            raise ConfigError(f"{file}: key '{key}' is missing from the sweep results")
    data["_source"] = str(file)
    return data


def sweep_curves(runs: Sequence[dict]):
    """``(task, label, run, points)`` of every curve of one or more sweeps, in order: ``points`` the curve's point
    records (its model's one-token-per-forward point first); a curve name seen twice in a task gets a ``#2`` suffix."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        where = run.get("_source", "sweep results")
        task = str(run["task"])
        labels = seen.setdefault(task, set())
        for name, curve in run["curves"].items():
            try:
                pts = [run["points"][i] for i in curve["points"]]
                if not all("tpf" in p and "accuracy" in p for p in pts):
                    raise KeyError("tpf")
            except (KeyError, IndexError, TypeError):
                raise ConfigError(f"{where}: curve {name!r} refers to points that are missing or incomplete "
                                  "(expected 'tpf' and 'accuracy')") from None
            label, k = name, 2
            while label in labels:
                label, k = f"{name} #{k}", k + 1
            labels.add(label)
            yield task, label, run, pts


def sweep_leaderboard_data(runs: Sequence[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{task: {curve: [(TPF, accuracy %), ...]}}`` of one or more sweeps (curves of the same task compete, with
    ``y_max`` across all of them; a curve name seen twice gets a ``#2`` suffix)."""
    data: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task, label, _, pts in sweep_curves(runs):
        data.setdefault(task, {})[label] = [(p["tpf"], p["accuracy"]) for p in pts]
    return data


def sweep_leaderboard(results: dict | Sequence[dict], *, name: str = "", **options):
    """The AUP leaderboard of sweep results (points below a curve's floor dropped; ``options``: ``alpha``,
    ``y_min_offset`` of :func:`d3llm.eval.leaderboard`).

    A sweep's accuracies are percent by construction, so no :class:`~d3llm.eval.aup_metric.FractionAccuracyWarning`
    is raised for low ones. A curve whose accuracy is 0 at every point (an untrained model) scores AUP 0: it has no
    area, and it does not take part in ``y_max``; when every curve of a task is 0, ``y_max`` is 0 and so is every AUP.
    """
    import warnings

    from d3llm.eval.aup_metric import FractionAccuracyWarning
    from d3llm.eval.leaderboards import Leaderboard, averages, leaderboard

    runs = [results] if isinstance(results, dict) else list(results)
    data = sweep_leaderboard_data(runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FractionAccuracyWarning)
        scored = {task: {m: pts for m, pts in curves.items() if any(y > 0 for _, y in pts)}
                  for task, curves in data.items()}
        scored = {task: curves for task, curves in scored.items() if curves}
        board = (leaderboard(scored, below_floor="drop", name=name, **options) if scored
                 else Leaderboard(tasks={}, y_max={}, average={}, name=name))
        for task, curves in data.items():
            for method, pts in curves.items():
                if method not in scored.get(task, {}):  # never integrated: a model that wrote nothing has TPF 0
                    board.points.setdefault(task, {})[method] = [(float(tpf), float(y)) for tpf, y in pts]
    board.tasks = {task: {m: board.tasks.get(task, {}).get(m, 0.0) for m in curves} for task, curves in data.items()}
    board.y_max = {task: board.y_max.get(task, 0.0) for task in data}
    board.average = averages(board.tasks)
    return board


# ---------------------------------------------------------------------------------------------------------------
# outputs: JSON, Markdown, PNG
# ---------------------------------------------------------------------------------------------------------------

def markdown_table(results: dict) -> str:
    """Every point (accuracy, TPF, positions forwarded per token, tokens/s, latency, NFE), then the AUP of every
    curve. Results written before positions were counted show "-" there."""
    metric = results["metric"]
    lines = [f"Task {results['task']}, {results['n']} problems per point, accuracy = {metric} exact match.", "",
             "| model | curve | threshold | accuracy % | TPF | positions/token | tokens/s | latency p50 / p99 (s) "
             "| NFE |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in results["points"]:
        method = f"{p['method']} (1 token/forward)" if p["baseline"] else p["curve"]
        threshold = "" if p["threshold"] is None else f"{p['threshold']:g}"
        positions = p.get("positions_per_token") or 0
        lines.append(f"| {p['model']} | {method} | {threshold} | {p['accuracy']:.2f} | {p['tpf']:.2f} | "
                     f"{f'{positions:.1f}' if positions else '-'} | {p['tokens_per_s']:,.0f} | "
                     f"{p['latency_p50_s']:.3f} / {p['latency_p99_s']:.3f} | {p['nfe']} |")
    board = sweep_leaderboard(results)
    lines += ["", "AUP of each curve (every curve starts at its model's one-token-per-forward point):", "",
              board.to_markdown()]
    return "\n".join(lines)


ANCHOR_MARKERS = ("*", "D", "s", "^", "v", "P", "X")  # one per model: its one-token-per-forward point


def plot(results: dict, path: str | os.PathLike) -> None:
    """Accuracy against TPF, one line per curve, its AUP area lightly shaded (the weighted heights ``y W(y)`` over
    the points within the floor, flat from TPF 0 to the first point, as AUP integrates them) and outlined by a
    dotted line. Each model has its own color and marks its one-token-per-forward point with its own marker (drawn
    larger for earlier models, so anchors at the same place stay visible); the legend sits beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from d3llm.eval.aup_metric import weight, within_floor

    board = sweep_leaderboard(results)
    task = results["task"]
    y_max = board.y_max[task]
    models = list(results["models"])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", "-.", ":")
    fig, ax = plt.subplots(figsize=(10, 4.8))
    drawn: dict[str, int] = {}  # model -> curves drawn so far (their line styles)
    for name, curve in results["curves"].items():
        m = models.index(curve["model"]) if curve["model"] in models else 0
        color = colors[m % len(colors)]
        pts = sorted((results["points"][i]["tpf"], results["points"][i]["accuracy"]) for i in curve["points"])
        label = f"{name}: AUP {board.tasks[task][name]:.1f}"
        if len(pts) == 1:
            size = 360 / (1 + 1.4 * m)  # a later model's anchor fits inside an earlier one's
            ax.scatter(*pts[0], color=color, marker=ANCHOR_MARKERS[m % len(ANCHOR_MARKERS)], s=size,
                       edgecolors="black", linewidths=0.8, zorder=5 + m, label=label)
            continue
        k = drawn.get(curve["model"], 0)
        drawn[curve["model"]] = k + 1
        ax.plot(*zip(*pts), marker="o", color=color, linestyle=styles[k % len(styles)], zorder=3, label=label)
        if not any(y > 0 for _, y in pts):  # no correct answer on this curve: no area to shade
            continue
        kept = within_floor(pts)
        (x1, y1), rest = kept[0], kept[1:]
        xs = [0.0, x1, x1] + [x for x, _ in rest]   # the first rectangle is unweighted, the trapezoids weighted
        ys = [y1, y1, y1 * weight(y1, y_max)] + [y * weight(y, y_max) for _, y in rest]
        ax.fill_between(xs, ys, 0, color=color, alpha=0.12, linewidth=0, zorder=1)
        ax.plot(xs, ys, color=color, linestyle=":", linewidth=1, alpha=0.8, zorder=2)
    ax.set_xlim(left=0)
    accs = [p["accuracy"] for p in results["points"]]
    ax.set_ylim(max(0.0, min(accs) - 5), min(101.0, max(accs) + 2))
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel(f"{results['metric']} exact match (%)")
    ax.set_title(f"{', '.join(models)} on {task} ({results['n']} problems)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title="shaded: the area AUP integrates", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_outputs(results: dict, out_dir: str | os.PathLike, *, png: bool = True) -> dict[str, Path]:
    """Write ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``out_dir`` (atomically); return their paths."""
    out = make_folder(out_dir)
    paths = output_paths(out, png=png)
    atomic_write_text(paths["json"], json.dumps(results, indent=2) + "\n")
    atomic_write_text(paths["table"], markdown_table(results) + "\n")
    if png:
        atomic_write(paths["png"], lambda p: plot(results, p))
    return paths


def output_paths(out_dir: str | os.PathLike, *, png: bool = True) -> dict[str, Path]:
    """The files :func:`write_outputs` writes into ``out_dir``: ``sweep.json``, ``sweep.md`` and (``png``)
    ``sweep.png``."""
    out = Path(out_dir)
    paths = {"json": out / "sweep.json", "table": out / "sweep.md"}
    if png:
        paths["png"] = out / "sweep.png"
    return paths
