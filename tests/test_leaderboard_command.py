"""`d3llm leaderboard`: the reference-layout YAML, the summary table and the plot, from a decode or from results."""

import json

import pytest
import yaml

from d3llm.cli.main import main
from d3llm.eval import aup
from d3llm.eval.leaderboard_report import markdown, reference_yaml_data, summarize


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("board") / "out"
    assert main(["leaderboard", "--model", "teacher", "--methods", "multi_block,eb_sampler",
                 "--thresholds", "0.1,2", "--limit", "6", "--batch-size", "6", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_leaderboard_writes_yaml_table_and_plot_that_agree(board, capsys):
    results = json.loads((board / "sweep.json").read_text())
    data = yaml.safe_load((board / "leaderboard.yaml").read_text())
    curves = data["arith:test"]
    assert sorted(curves) == ["arith-teacher eb_sampler", "arith-teacher multi_block",
                              "arith-teacher vanilla (1 token/forward)"]
    anchor = results["points"][0]
    for name, pts in curves.items():  # every curve starts at the anchor, sorted by TPF, within the floor
        assert pts[0] == [anchor["tpf"], anchor["accuracy"]], name
        assert [p[0] for p in pts] == sorted(p[0] for p in pts)
        assert all(y >= pts[0][1] - 5 for _, y in pts)
    # `d3llm aup --yaml` reads the file and scores every curve as the leaderboard's table does
    capsys.readouterr()
    assert main(["aup", "--yaml", str(board / "leaderboard.yaml"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)["tasks"]["arith:test"]
    rows = {r.curve: r for r in summarize([results])}
    y_max = max(p["accuracy"] for p in results["points"])
    for name, pts in curves.items():
        assert scored[name] == pytest.approx(rows[name].aup, abs=1e-9)
        assert rows[name].aup == pytest.approx(aup([tuple(p) for p in pts], y_max))
    table = (board / "leaderboard.md").read_text()
    assert "| rank | curve | AUP | max accuracy % | TPF within 1 pt (threshold) |" in table
    assert "positions/token there" in table and "arith-teacher multi_block" in table
    assert (board / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (board / "sweep.json").is_file() and not (board / "sweep.json.partial").exists()


def test_leaderboard_of_finished_results_decodes_nothing(board, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["leaderboard", "--results", str(board / "sweep.json"), "--out", str(out), "--no-plot"]) == 0
    assert yaml.safe_load((out / "leaderboard.yaml").read_text()) == yaml.safe_load(
        (board / "leaderboard.yaml").read_text())
    assert not (out / "sweep.json").exists() and not (out / "leaderboard.png").exists()
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(board / "sweep.json"), "--model", "teacher", "--out", str(out)]) == 2
    assert "--results builds the leaderboard of finished sweeps; --model would decode" in capsys.readouterr().err
    assert main(["leaderboard", "--results", str(tmp_path / "none.json"), "--out", str(out)]) == 2
    assert "none.json' do not exist" in capsys.readouterr().err
    assert main(["leaderboard", "--methods", "multi_blok", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'multi_blok' (did you mean 'multi_block'?)" in err and not (tmp_path / "o").exists()


def _results():
    """Two models' curves: an anchor each, a zoo curve that beats multi_block on the first, one below the floor."""
    points = [
        {"model": "a", "method": "vanilla", "threshold": None, "tpf": 0.8, "accuracy": 90.0},           # 0
        {"model": "a", "method": "multi_block", "threshold": 0.5, "tpf": 4.0, "accuracy": 89.5,
         "positions_per_token": 12.0, "tokens_per_s": 100.0},                                         # 1
        {"model": "a", "method": "multi_block", "threshold": 2.0, "tpf": 8.0, "accuracy": 80.0,
         "positions_per_token": 8.0, "tokens_per_s": 200.0},                                          # 2 below floor
        {"model": "a", "method": "eb_sampler", "threshold": 0.1, "tpf": 5.0, "accuracy": 89.2,
         "positions_per_token": 20.0, "tokens_per_s": 90.0},                                          # 3
        {"model": "a", "method": "eb_sampler", "threshold": 1.0, "tpf": 7.0, "accuracy": 88.5,
         "positions_per_token": 18.0, "tokens_per_s": 120.0},                                         # 4 beyond 1 pt
        {"model": "b", "method": "vanilla", "threshold": None, "tpf": 0.8, "accuracy": 92.0},           # 5
        {"model": "b", "method": "multi_block", "threshold": 0.5, "tpf": 9.0, "accuracy": 91.0,
         "positions_per_token": 6.0, "tokens_per_s": 300.0},                                          # 6
    ]
    for p in points:
        p["baseline"] = p["threshold"] is None
    curves = {"a vanilla (1 token/forward)": {"model": "a", "method": "vanilla", "points": [0]},
              "a multi_block": {"model": "a", "method": "multi_block", "points": [0, 1, 2]},
              "a eb_sampler": {"model": "a", "method": "eb_sampler", "points": [0, 3, 4]},
              "b vanilla (1 token/forward)": {"model": "b", "method": "vanilla", "points": [5]},
              "b multi_block": {"model": "b", "method": "multi_block", "points": [5, 6]}}
    return {"kind": "d3llm-sweep", "task": "t", "n": 10, "metric": "strict", "points": points, "curves": curves}


def test_operating_point_floor_and_the_comparison_with_multi_block():
    results = _results()
    rows = {r.curve: r for r in summarize([results])}
    y_max = 92.0  # the task's best point, across both models
    assert rows["a multi_block"].aup == pytest.approx(aup([(0.8, 90.0), (4.0, 89.5)], y_max))
    assert rows["a multi_block"].below_floor == 1
    assert rows["a eb_sampler"].operating["threshold"] == 0.1  # 7.0 is 1.5 points down: not within 1 point
    assert rows["a multi_block"].operating["tpf"] == 4.0 and rows["a vanilla (1 token/forward)"].operating is None
    assert reference_yaml_data([results])["t"]["a multi_block"] == [[0.8, 90.0], [4.0, 89.5]]  # no 80 % point
    table = markdown([results])
    assert "### a on t (10 problems; one token per forward: 90.00%)" in table
    assert "| 1 | a eb_sampler |" in table  # best AUP first
    assert ("Beat a multi_block (AUP " in table and "a eb_sampler (AUP" in table
            and "20.0 positions/token vs 12.0" in table)
    assert "No curve beats b multi_block" in table


def test_a_curve_that_wrote_nothing_is_left_out_of_the_yaml():
    results = _results()
    results["points"][6].update(tpf=0.0, accuracy=0.0)
    results["points"][5].update(tpf=0.0, accuracy=0.0)
    data = reference_yaml_data([results])["t"]
    assert "b multi_block" not in data and "a multi_block" in data


def test_the_sweep_help_names_the_default_methods():
    from d3llm.cli import sweep as cli_sweep
    from d3llm.eval.sweep import DEFAULT_METHODS

    assert "fast_dllm,block_entropy,multi_block" in open(cli_sweep.__file__).read()
    assert ",".join(DEFAULT_METHODS) == "fast_dllm,block_entropy,multi_block"
