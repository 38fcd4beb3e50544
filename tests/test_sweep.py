"""`d3llm sweep` on the shipped teacher (a few problems) and its bad-input errors; `d3llm aup RESULTS.json`."""

import json

import pytest

from d3llm.assets import default_model_path
from d3llm.cli.main import main
from d3llm.errors import ConfigError
from d3llm.eval import aup
from d3llm.eval.sweep import SweepConfig

SWEEP = """\
task: arith
limit: 6
batch_size: 6
methods:
  fast_dllm:
    threshold: [0.9, 0.3]
  block_entropy:
    threshold: [0.5, 4.0]
  multi_block:
    threshold: [0.2, 4.0]
  multi_block no cache:
    method: multi_block
    threshold: 0.2
    cache_delay_iter: null
    refresh_interval: null
"""


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "sweep.yaml"
    config.write_text(SWEEP)
    out = folder / "out"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def test_sweep_writes_points_table_and_plot(sweep_run):
    results = json.loads((sweep_run / "sweep.json").read_text())
    points = results["points"]
    assert [p["method"] for p in points] == ["vanilla"] + ["fast_dllm"] * 2 + ["block_entropy"] * 2 + \
        ["multi_block"] * 3
    for p in points:
        assert p["n"] == 6
        assert 0 <= p["accuracy"] <= 100 and p["tpf"] > 0 and p["tokens_per_s"] > 0 and p["nfe"] > 0
        assert 0 < p["latency_p50_s"] <= p["latency_p99_s"]
        assert p["tpf"] == pytest.approx(p["tokens"] / p["nfe"], abs=1e-4)
        assert p["params"]["max_new_tokens"] == 48 and p["params"]["block_size"] == 16  # the folder's defaults
    base = points[0]
    assert base["baseline"] and base["params"]["steps"] == 48  # one token per forward
    assert base["nfe"] == 6 * 48                                # every position forwarded once
    assert points[1]["params"]["cache"] == "dual" and points[1]["params"]["threshold"] == 0.9
    assert points[5]["params"]["cache_delay_iter"] == 2          # the folder's cache settings
    assert points[7]["params"]["cache_delay_iter"] is None
    env = results["environment"]
    for key in ("torch", "python", "d3llm", "git_sha", "dtype", "cpu", "device"):
        assert key in env
    # every curve starts at its model's one-token-per-forward point
    for name, curve in results["curves"].items():
        assert curve["points"][0] == 0, name
    curve = results["curves"]["arith-teacher multi_block"]
    pts = [(points[i]["tpf"], points[i]["accuracy"]) for i in curve["points"]]
    y_max = max(p["accuracy"] for p in points)
    assert results["aup"]["y_max"] == y_max
    if min(a for _, a in pts) >= pts[0][1] - 5:
        assert results["aup"]["curves"]["arith-teacher multi_block"] == pytest.approx(aup(pts, y_max))
    table = (sweep_run / "sweep.md").read_text()
    assert "| arith-teacher | vanilla (1 token/forward) |" in table and "arith-teacher multi_block no cache" in table
    assert "| TPF | positions/token |" in table
    assert all(p["positions_per_token"] >= 1 for p in points)  # every generated position is forwarded at least once
    png = (sweep_run / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_aup_of_results_json_matches_the_sweep(sweep_run, capsys):
    assert main(["aup", str(sweep_run / "sweep.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    results = json.loads((sweep_run / "sweep.json").read_text())
    assert out["tasks"]["arith:test"] == pytest.approx(results["aup"]["curves"])
    # two runs of the same sweep compete on one leaderboard: curve names stay distinct
    assert main(["aup", str(sweep_run / "sweep.json"), str(sweep_run / "sweep.json"), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)["tasks"]["arith:test"]
    assert "arith-teacher multi_block #2" in both and len(both) == 2 * len(results["curves"])


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("methods:\n  multi_blok:\n    threshold: [0.5]\n", r"methods.multi_blok: unknown method 'multi_blok' "
                                                         r"\(did you mean 'multi_block'\?\)"),
    ("methods:\n  curve:\n    method: greedy\n", r"methods.curve.method: unknown method 'greedy'"),
    ("methods:\n  vanilla:\n    threshold: [1]\n", "one-token-per-forward vanilla point is measured"),
    ("limit: 5\n", "key 'methods' is missing"),
    ("methods:\n  fast_dllm:\n    threshold: []\n", r"methods.fast_dllm.threshold must be a number or a non-empty"),
    ("methods:\n  fast_dllm:\n    threshold: [0.5]\nlimt: 3\n", r"unknown key\(s\) \['limt'\]"),
    ("methods:\n  fast_dllm:\n    threshold: [0.5]\nlimit: 0\n", "limit must be an integer >= 1, got 0"),
    ("methods:\n  fast_dllm:\n    threshold: [0.5]\nmetric: bleu\n", "metric must be one of"),
    ("methods:\n  fast_dllm:\n    threshold: [0.5]\ndecoder:\n  threshold: 0.3\n", "thresholds are swept"),
])
def test_bad_sweep_file_names_file_key_and_value(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        SweepConfig.from_yaml(path)
    assert str(path) in str(info.value)


def test_bad_parameter_fails_before_decoding(tmp_path, capsys):
    path = _write(tmp_path, "methods:\n  fast_dllm:\n    threshold: [0.5]\n    cache: triple\n")
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: methods.fast_dllm:" in err and "triple" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_model_folder_and_config(tmp_path, capsys):
    path = _write(tmp_path, "methods:\n  fast_dllm:\n    threshold: [0.5]\n")
    assert main(["sweep", "--model", str(tmp_path / "nope"), "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert f"model folder '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    assert main(["sweep", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "none.yaml' does not exist" in capsys.readouterr().err
    assert main(["sweep", "--methods", "fast_dllm,beam", "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'beam'" in capsys.readouterr().err


def test_flags_without_config(tmp_path):
    out = tmp_path / "o"
    assert main(["sweep", "--model", str(default_model_path()), "--methods", "multi_block", "--thresholds", "0.5",
                 "--limit", "3", "--batch-size", "3", "--out", str(out), "--no-progress", "--no-plot"]) == 0
    results = json.loads((out / "sweep.json").read_text())
    assert [(p["method"], p["threshold"]) for p in results["points"]] == [("vanilla", None), ("multi_block", 0.5)]
    assert not (out / "sweep.png").exists()


def test_a_causal_model_is_one_autoregressive_point(tmp_path):
    """The shipped AR baseline beside the teacher: its one point is autoregressive decoding, and it has no curves."""
    from d3llm.assets import ASSETS

    config = tmp_path / "sweep.yaml"
    config.write_text("task: arith\nlimit: 4\nbatch_size: 4\ndecoder:\n  max_new_tokens: 48\n  block_size: 16\n"
                      "methods:\n  multi_block:\n    threshold: [0.2]\n")
    out = tmp_path / "out"
    assert main(["sweep", "--model", str(ASSETS / "arith-ar"), "--model", str(default_model_path()), "--config",
                 str(config), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "sweep.json").read_text())
    ar = [p for p in results["points"] if p["model"] == "arith-ar"]
    assert [(p["method"], p["baseline"]) for p in ar] == [("autoregressive", True)]
    assert ar[0]["params"]["max_new_tokens"] == 48 and ar[0]["nfe"] > 0
    assert sorted(results["curves"]) == ["arith-ar autoregressive (1 token/forward)", "arith-teacher multi_block",
                                         "arith-teacher vanilla (1 token/forward)"]


def test_a_model_right_nowhere_scores_zero_without_a_fraction_warning(tmp_path, capsys):
    """An untrained model (random weights: accuracy 0 at every point) scores AUP 0, alone or beside a model that
    scores; a sweep's accuracies are percent, so no warning about fractions."""
    import warnings

    from d3llm.eval.aup_metric import FractionAccuracyWarning
    from d3llm.eval.sweep import sweep_leaderboard
    from distill_helpers import tiny_teacher

    model = tiny_teacher(tmp_path)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FractionAccuracyWarning)
        assert main(["sweep", "--model", str(model), "--methods", "multi_block", "--thresholds", "0.5,2",
                     "--limit", "3", "--batch-size", "3", "--max-new-tokens", "16", "--block-size", "8",
                     "--out", str(out), "--no-progress"]) == 0
        results = json.loads((out / "sweep.json").read_text())
        assert {p["accuracy"] for p in results["points"]} == {0.0}
        assert results["aup"]["y_max"] == 0 and set(results["aup"]["curves"].values()) == {0.0}
        assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
        capsys.readouterr()
        assert main(["aup", str(out / "sweep.json"), "--json"]) == 0
        assert set(json.loads(capsys.readouterr().out)["tasks"]["arith:test"].values()) == {0.0}
        # beside a curve that scores: the zero curve is 0 and y_max is the other curve's best
        points = [{"tpf": 1.0, "accuracy": 60.0}, {"tpf": 4.0, "accuracy": 58.0}, {"tpf": 1.0, "accuracy": 0.0},
                  {"tpf": 9.0, "accuracy": 0.0}]
        board = sweep_leaderboard({"task": "t", "points": points,
                                   "curves": {"good": {"points": [0, 1]}, "zero": {"points": [2, 3]}}})
    assert board.tasks["t"]["zero"] == 0.0 and board.tasks["t"]["good"] == pytest.approx(aup(
        [(1.0, 60.0), (4.0, 58.0)], 60.0)) and board.y_max["t"] == 60.0 and board.methods == ["good", "zero"]


def test_a_model_that_writes_nothing_scores_zero_and_plots(tmp_path):
    """An untrained model may end every answer at once: TPF 0 and accuracy 0 at every point. It scores 0 beside a
    model that scores, and the plot draws it without a warning or an error (nothing to shade)."""
    import warnings

    from d3llm.eval.sweep import plot, sweep_leaderboard

    points = [{"tpf": 0.7, "accuracy": 90.0}, {"tpf": 5.0, "accuracy": 88.0}, {"tpf": 0.0, "accuracy": 0.0},
              {"tpf": 0.0, "accuracy": 0.0}]
    results = {"task": "t", "n": 10, "metric": "strict", "models": {"good": {}, "empty": {}}, "points": points,
               "curves": {"good c": {"model": "good", "points": [0, 1]}, "empty c": {"model": "empty", "points": [2, 3]}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        board = sweep_leaderboard(results)
        plot(results, tmp_path / "p.png")
    assert board.tasks["t"]["empty c"] == 0.0 and board.tasks["t"]["good c"] > 0 and board.y_max["t"] == 90.0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_zoo_methods_sweep_their_own_parameter(tmp_path):
    """Every zoo method is a curve; fast_dllm_factor's swept values are its factor (given as 'factor' or as
    'threshold', not both), the others' their threshold."""
    out = tmp_path / "o"
    config = _write(tmp_path, "limit: 3\nbatch_size: 3\ndecoder:\n  max_new_tokens: 32\n  block_size: 16\nmethods:\n"
                    "  fast_dllm_factor:\n    factor: [2.0]\n  hierarchy:\n    threshold: 0.7\n"
                    "  local_leap:\n    threshold: 0.7\n  credit:\n    threshold: 0.7\n  klass:\n    threshold: 0.6\n")
    assert main(["sweep", "--config", str(config), "--out", str(out), "--no-progress", "--no-plot"]) == 0
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [(p["method"], p["threshold"]) for p in points] == [
        ("vanilla", None), ("fast_dllm_factor", 2.0), ("hierarchy", 0.7), ("local_leap", 0.7), ("credit", 0.7),
        ("klass", 0.6)]
    factor = points[1]
    assert factor["params"]["factor"] == 2.0 and "threshold" not in factor["params"], factor["params"]
    both = _write(tmp_path, "methods:\n  fast_dllm_factor:\n    factor: [1.0]\n    threshold: [0.5]\n")
    with pytest.raises(ConfigError, match="give the swept values as 'threshold' or as 'factor', not both"):
        SweepConfig.from_yaml(both)


def test_a_curve_may_sweep_another_parameter(tmp_path):
    """`swept: NAME` makes the curve's values set NAME (here the early exit's starting margin); the other
    parameters stay fixed along it, and the settings round-trip through the results' config."""
    config = _write(tmp_path, "limit: 2\nbatch_size: 2\nmethods:\n  mb exit:\n    method: multi_block\n"
                    "    threshold: 0.2\n    early_exit: sched\n    exit_low: 5\n    swept: exit_high\n"
                    "    exit_high: [40, 8]\n")
    grid = SweepConfig.from_yaml(config)
    assert grid.to_dict()["methods"]["mb exit"]["exit_high"] == [40.0, 8.0]
    assert SweepConfig.from_dict(grid.to_dict()).to_dict() == grid.to_dict()
    out = tmp_path / "o"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--no-progress", "--no-plot"]) == 0
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [(p["threshold"], p["params"]["exit_high"], p["params"]["threshold"]) for p in points[1:]] == [
        (40.0, 40.0, 0.2), (8.0, 8.0, 0.2)]
    assert points[1]["params"]["early_exit"] == "sched" and points[1]["params"]["exit_low"] == 5
    # vanilla is a curve of its own once it exits early (else it is only the anchor), with the values given
    exits = SweepConfig.from_dict({"methods": {"v": {"method": "vanilla", "early_exit": "prophet", "swept":
                                                     "exit_high", "exit_high": [30, 20]}}})
    assert exits.methods[0].method == "vanilla" and exits.methods[0].thresholds == [30.0, 20.0]
    with pytest.raises(ConfigError, match="vanilla has no default grid; give the curve's values"):
        SweepConfig.from_dict({"methods": {"v": {"method": "vanilla", "early_exit": "prophet"}}})
    for text, message in (("    swept: exit_hi\n    exit_high: [40]\n", "swept names the parameter"),
                          ("    swept: exit_high\n    exit_high: [40]\n    threshold: [0.2, 0.5]\n",
                           "the curve sweeps 'exit_high'; give one threshold")):
        bad = _write(tmp_path, "methods:\n  c:\n    method: multi_block\n    early_exit: sched\n" + text)
        with pytest.raises(ConfigError, match=message):
            SweepConfig.from_yaml(bad)
