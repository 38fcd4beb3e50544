"""AUP leaderboards: y_max across methods, ranking, the reference's YAML layout and aggregation, `d3llm aup`."""

import json

import pytest

from d3llm.cli.main import main
from d3llm.errors import AUPError, ConfigError
from d3llm.eval import aup
from d3llm.eval.leaderboards import leaderboard, read_leaderboard_yaml, reference_average

# A leaderboard in the reference's layout (values made up for the test).
BOARD_YAML = """\
# task -> method -> list of [TPF, accuracy %]
TaskA:
  Base:
  - [1.0, 70.0]
  Fast:
  - [1.0, 71.0]
  - [3.0, 70.0]
  Faster:
  - [1.0, 69.0]
  - [6.0, 66.0]
TaskB:
  Base:
  - [1.0, 40.0]
  Fast:
  - [1.0, 42.0]
  - [2.0, 41.5]
  Faster:
  - [1.0, 41.0]
  - [4.5, 38.0]
"""


@pytest.fixture()
def board_file(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text(BOARD_YAML)
    return path


def test_leaderboard_scores_every_method_with_y_max_per_task(board_file):
    data = read_leaderboard_yaml(board_file)
    board = leaderboard(data)
    assert board.y_max == {"TaskA": 71.0, "TaskB": 42.0}
    for task, methods in data.items():
        for method, pts in methods.items():
            assert board.tasks[task][method] == aup(pts, board.y_max[task])
    assert board.average["Fast"] == pytest.approx((board.tasks["TaskA"]["Fast"] + board.tasks["TaskB"]["Fast"]) / 2)
    assert board.methods[0] == max(board.average, key=board.average.get)
    assert board.rank[board.methods[-1]] == 3
    table = board.to_markdown()
    assert "| rank | method | TaskA | TaskB | average |" in table and "y_max: TaskA 71, TaskB 42" in table


def test_a_better_method_lowers_everyone_through_y_max(board_file):
    data = read_leaderboard_yaml(board_file)
    before = leaderboard(data)
    data["TaskA"]["Oracle"] = [(1.0, 90.0)]
    after = leaderboard(data)
    assert after.y_max["TaskA"] == 90.0
    for method in ("Fast", "Faster"):  # curves with points beyond TPF 1 are weighted down
        assert after.tasks["TaskA"][method] < before.tasks["TaskA"][method]
    assert after.tasks["TaskA"]["Base"] == before.tasks["TaskA"]["Base"]  # a lone TPF-1 point is unweighted
    assert after.tasks["TaskB"] == before.tasks["TaskB"]


def test_below_floor_error_names_task_and_method_or_drops():
    data = {"T": {"ok": [(1.0, 80.0)], "steep": [(1.0, 80.0), (2.0, 78.0), (5.0, 60.0)]}}
    with pytest.raises(AUPError, match=r"task 'T', method 'steep': accuracy drops by 20"):
        leaderboard(data)
    board = leaderboard(data, below_floor="drop")
    assert board.dropped == {"T": {"steep": 1}}
    assert board.tasks["T"]["steep"] == aup([(1.0, 80.0), (2.0, 78.0)], 80.0)
    assert "1 below floor" in board.to_markdown()


def test_reference_average_keeps_main_py_quirks(board_file):
    board = leaderboard(read_leaderboard_yaml(board_file))
    ref = reference_average([board])
    assert ref["Fast"] == pytest.approx(sum(board.tasks[t]["Fast"] for t in board.tasks) / 5.0)
    # a method in two files accumulates both; tasks are excluded only when named exactly 'humaneval+'/'mbpp+'
    plus = leaderboard({"HumanEval+": {"Fast": [(1.0, 50.0)]}, "humaneval+": {"Fast": [(1.0, 30.0)]}})
    both = reference_average([board, plus])
    assert both["Fast"] == pytest.approx(ref["Fast"] + 50.0 / 5.0)


@pytest.mark.parametrize("text, message", [
    ("TaskA:\n  M:\n  - [1.0]\n", r"task 'TaskA', method 'M', point 1: expected \[TPF, accuracy %\], got \[1.0\] "
                                  r"\(a field is missing\)"),
    ("TaskA:\n  M:\n", r"task 'TaskA', method 'M': expected a non-empty list"),
    ("TaskA:\n", r"task 'TaskA': expected a mapping of method"),
    ("TaskA:\n  M:\n  - [1.0, 70.0]\n  - [0.0, 69.0]\n", r"method 'M', point 2: TPF must be positive .*got 0.0"),
    ("TaskA:\n  M:\n  - [1.0, 101.5]\n", r"method 'M', point 1: accuracy must be a percentage in \[0, 100\], got 101.5"),
    ("- [1, 2]\n", "expected a mapping of task"),
    ("TaskA: [\n", "not valid YAML"),
])
def test_bad_yaml_is_a_clear_error_naming_file_key_and_value(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises((ConfigError, AUPError), match=message) as info:
        read_leaderboard_yaml(path)
    assert str(path) in str(info.value)


def test_cli_aup_yaml_markdown_and_json(board_file, capsys):
    assert main(["aup", "--yaml", str(board_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    board = leaderboard(read_leaderboard_yaml(board_file))
    assert out == json.loads(json.dumps(board.to_json()))
    assert set(out) == {"tasks", "y_max", "average"}

    assert main(["aup", "--yaml", str(board_file)]) == 0
    text = capsys.readouterr().out
    assert f"| 1 | {board.methods[0]} |" in text

    assert main(["aup", "--yaml", str(board_file), "--yaml", str(board_file), "--reference-exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["average"]["Fast"] == pytest.approx(2 * reference_average([board])["Fast"])


def test_cli_aup_errors_are_one_line(tmp_path, capsys):
    assert main(["aup", "--yaml", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml' does not exist" in err and "Traceback" not in err
    assert main(["aup"]) == 2
    assert "nothing to score" in capsys.readouterr().err
