"""Resumable evaluation: ``d3llm eval --out`` and ``d3llm sweep --out`` interrupted by Ctrl-C (a KeyboardInterrupt
raised from inside the decoding loop) keep their finished batches and points, a rerun finishes with fewer decodes and
the results of an uninterrupted run (timings aside), a rerun with other settings is refused; the progress bars count
problems as they finish; the plan check shared with the trajectory extraction."""

import json

import pytest

import d3llm
import d3llm.eval.progress as progress_module
from d3llm.assets import AR, TEACHER
from d3llm.cli.main import main
from d3llm.errors import ConfigError
from d3llm.eval import evaluate
from d3llm.eval.partial import KIND, partial_path
from d3llm.resume import check_plan, plan_differences
from d3llm.tasks import load_dataset

#: what may differ between an interrupted-and-resumed run and an uninterrupted one: measured times
TIMING = {"wall_s", "model_s", "tokens_per_s", "batch_wall_s", "latency_p50_s", "latency_p99_s", "elapsed_s",
          "environment"}


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


class Decodes:
    """Wraps ``d3llm.generate``: counts the calls (warm-ups included) and raises KeyboardInterrupt at call
    ``stop_at`` (1-based), as a Ctrl-C in the middle of that decode would."""

    def __init__(self, monkeypatch, stop_at: int | None = None):
        self.real, self.calls, self.stop_at = d3llm.generate, 0, stop_at
        monkeypatch.setattr(d3llm, "generate", self)

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.real(*args, **kw)


class Recorder:
    """A progress sink (and a stand-in for :class:`ProblemBar`) that records every update."""

    made: list = []

    def __init__(self, total=None, title="", done=0):
        self.total, self.done, self.steps, self.batches = total, done, [], []
        Recorder.made.append(self)

    def describe(self, text):
        pass

    def step(self, finished, filled):
        self.steps.append((self.done, finished, filled))

    def advance(self, requests, tokens, nfe):
        self.batches.append(requests)
        self.done += requests

    def close(self):
        pass


EVAL = ["eval", "--model", "teacher", "--method", "multi_block", "--limit", "8", "--batch-size", "2"]


def test_eval_resumes_after_ctrl_c_with_the_uninterrupted_results(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole.json"
    full = Decodes(monkeypatch)
    assert main([*EVAL, "--out", str(whole), "--no-progress"]) == 0
    assert full.calls == 1 + 4  # the warm-up and four batches
    assert not partial_path(whole).exists()

    out = tmp_path / "eval.json"
    Decodes(monkeypatch, stop_at=4)  # warm-up, two batches, then Ctrl-C in the third
    assert main([*EVAL, "--out", str(out), "--no-progress"]) == 130
    assert "interrupted (4 of 8 problems are saved in " in capsys.readouterr().err
    assert not out.exists()
    saved = json.loads(partial_path(out).read_text())
    assert saved["kind"] == KIND and saved["plan"]["limit"] == 8
    assert sorted(saved["batches"]["eval"]) == ["0", "2"]

    rerun = Decodes(monkeypatch)
    assert main([*EVAL, "--out", str(out), "--no-progress"]) == 0
    assert rerun.calls == 1 + 2  # the warm-up and the two batches left
    assert not partial_path(out).exists()
    a, b = json.loads(whole.read_text()), json.loads(out.read_text())
    assert without_timing(a) == without_timing(b)
    assert sorted(a) == sorted(b) and [sorted(r) for r in a["records"]] == [sorted(r) for r in b["records"]]
    assert [r["prediction"] for r in b["records"]] == [r["prediction"] for r in a["records"]]


@pytest.mark.parametrize("change, named", [
    (["--limit", "6"], "limit (8 there, 6 now)"),
    (["--threshold", "0.9"], "params.threshold ("),
    (["--seed", "3"], "seed (null there, 3 now)"),
    (["--model", "student"], "model.path ("),
])
def test_eval_refuses_to_continue_with_other_settings(tmp_path, monkeypatch, capsys, error_line, change, named):
    out = tmp_path / "eval.json"
    Decodes(monkeypatch, stop_at=3)
    assert main([*EVAL, "--out", str(out), "--no-progress"]) == 130
    capsys.readouterr()
    before = partial_path(out).read_text()
    argv = [*EVAL, "--out", str(out), "--no-progress"]
    for flag in change[::2]:  # the changed flag replaces the one in EVAL
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    assert main([*argv, *change]) == 2
    line = error_line("eval")
    assert f"{partial_path(out)} holds an unfinished evaluation of another configuration (differs in: " in line
    assert named in line and "choose another --out, or delete" in line and "to start over" in line
    assert partial_path(out).read_text() == before  # kept as it was


def test_an_interruption_before_any_batch_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval.json"
    Decodes(monkeypatch, stop_at=1)  # Ctrl-C in the warm-up
    assert main([*EVAL, "--out", str(out), "--no-progress"]) == 130
    assert "interrupted (no batch had finished: nothing is saved)" in capsys.readouterr().err
    assert not partial_path(out).exists() and not out.exists()


def test_a_damaged_partial_file_is_a_clear_error(tmp_path, error_line):
    out = tmp_path / "eval.json"
    partial_path(out).write_text("{not json")
    assert main([*EVAL, "--out", str(out), "--no-progress"]) == 2
    line = error_line("eval")
    assert "is not valid JSON" in line and f"delete {partial_path(out)} to start over" in line


SWEEP = """\
task: arith
limit: 2
batch_size: 1
methods:
  multi_block:
    threshold: [0.2, 4.0]
"""


def _sweep(tmp_path, out, *extra):
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP)
    return main(["sweep", "--model", "teacher", "--config", str(config), "--out", str(out), "--no-plot", *extra])


def test_sweep_resumes_point_by_point_and_batch_by_batch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "ProblemBar", Recorder)
    Recorder.made = []
    whole = tmp_path / "whole"
    full = Decodes(monkeypatch)
    assert _sweep(tmp_path, whole) == 0
    assert full.calls == 2 + 3 * 2  # vanilla and multi_block warm up once each; 3 points of 2 batches
    bar = Recorder.made[-1]
    assert (bar.total, bar.batches, bar.done) == (6, [1] * 6, 6)

    out = tmp_path / "out"
    # the vanilla point (warm-up + 2 batches), then multi_block's warm-up and first batch; Ctrl-C in its second
    Decodes(monkeypatch, stop_at=6)
    assert _sweep(tmp_path, out) == 130
    assert "interrupted (3 of 6 problems are saved in " in capsys.readouterr().err
    assert not (out / "sweep.json").exists()
    saved = json.loads(partial_path(out / "sweep.json").read_text())
    assert list(saved["points"]) == ["0.0"] and saved["points"]["0.0"]["baseline"]
    assert list(saved["batches"]) == ["0.1"] and list(saved["batches"]["0.1"]) == ["0"]

    rerun = Decodes(monkeypatch)
    assert _sweep(tmp_path, out) == 0
    assert rerun.calls == 1 + 1 + 2  # multi_block's warm-up, the second batch of 0.2, both batches of 4.0
    bar = Recorder.made[-1]
    assert bar.batches == [0] + [1] * 3 and bar.done == 6  # 0: the kept batch's tokens join the running TPF
    assert bar.steps[0][0] == 3  # the problems saved before count as done from the start
    assert not partial_path(out / "sweep.json").exists()
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (whole, out))
    assert without_timing(a) == without_timing(b)
    assert a["aup"] == b["aup"] and [p["tpf"] for p in a["points"]] == [p["tpf"] for p in b["points"]]
    aup_table = [(d / "sweep.md").read_text().split("AUP of each curve")[1] for d in (whole, out)]
    assert aup_table[0] == aup_table[1]

    Decodes(monkeypatch, stop_at=3)  # the vanilla point's first batch is saved
    assert _sweep(tmp_path, out) == 130
    capsys.readouterr()
    assert _sweep(tmp_path, out, "--limit", "1") == 2
    err = capsys.readouterr().err
    assert "holds an unfinished sweep of another configuration (differs in: limit (2 there, 1 now))" in err


def test_progress_moves_within_a_batch_and_counts_problems_as_they_finish():
    """One-token-per-forward rows all finish at the last step: the bar still moves at every step. The AR baseline's
    rows finish at their own end of text, and each counts the moment it does."""
    data = load_dataset("arith:test", size=4)
    for folder, method in ((TEACHER, "vanilla"), (AR, "autoregressive")):
        model, tok = d3llm.load_model(folder), d3llm.load_tokenizer(folder)
        bar = Recorder(4)
        evaluate(model, tok, data, method, batch_size=4, warmup=False, progress=bar)
        assert bar.batches == [4] and len(bar.steps) >= 30
        filled = [f for _, _, f in bar.steps]
        assert filled == sorted(filled) and 0 < filled[0] < 0.2 and filled[-1] <= 4
        finished = [n for _, n, _ in bar.steps]
        assert finished == sorted(finished) and all(f >= n for _, n, f in bar.steps)
        if method == "autoregressive":
            assert 0 < max(finished) < 4  # some rows were done before the batch was


def test_evaluate_counts_resumed_batches_as_done(monkeypatch):
    monkeypatch.setattr(progress_module, "ProblemBar", Recorder)
    Recorder.made = []
    model, tok = d3llm.load_model(TEACHER), d3llm.load_tokenizer(TEACHER)
    data = load_dataset("arith:test", size=6)
    saved = []
    first = evaluate(model, tok, data, "multi_block", batch_size=2, save_batch=saved.append, progress=True)
    again = evaluate(model, tok, data, "multi_block", batch_size=2, progress=True,
                     resume_from={b.start: b for b in saved[:2]})
    assert Recorder.made[-1].done == 6 and Recorder.made[-1].batches == [0, 2]
    assert Recorder.made[-1].steps[0][0] == 4
    assert without_timing(first.to_dict()) == without_timing(again.to_dict())


def test_plan_differences_name_nested_settings_and_both_values():
    old = {"limit": 8, "decoder": {"threshold": 0.5, "block_size": 16}, "path": "/a", "seed": None}
    new = {"limit": 8, "decoder": {"threshold": 0.2, "block_size": 16}, "path": "/b", "seed": None}
    assert plan_differences(old, new, ignore=("path",)) == ["decoder.threshold (0.5 there, 0.2 now)"]
    check_plan(old, {**old, "decoder": dict(old["decoder"])}, where="w", what="x", hint="h")  # equal: continues
    check_plan(None, new, where="w", what="x", hint="h")                                    # nothing saved yet
    with pytest.raises(ConfigError, match=r"^w holds x of another configuration \(differs in: "
                                          r"decoder.threshold \(0.5 there, 0.2 now\), path \('/a' there, '/b' now\)\); "
                                          r"h$"):
        check_plan(old, new, where="w", what="x", hint="h")
    # a plan read back from JSON (lists for tuples) is the same plan
    check_plan({"t": [1, 2]}, {"t": (1, 2)}, where="w", what="x", hint="h")
