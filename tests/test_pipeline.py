"""``d3llm pipeline``: every stage end to end on the micro preset, a rerun that skips every verified stage, a
changed output that is run again, an interrupted distillation that resumes there, and other settings refused."""

import json

import pytest

from d3llm.cli.main import main
from d3llm.pipeline import presets
from d3llm.pipeline.record import Record

ARGS = ["--preset", "micro", "--threads", "1", "--no-progress"]
COMMANDS = [("d3llm.cli.train", "run"), ("d3llm.cli.trajectories", "run_extract"), ("d3llm.cli.distill", "run"),
            ("d3llm.cli.sweep", "run")]


@pytest.fixture
def micro(monkeypatch):
    """The micro preset offered by the command line, for this test."""
    monkeypatch.setitem(presets.PRESETS, "micro", presets.micro)


def _forbid(monkeypatch, commands=COMMANDS):
    """Make the given commands fail if a stage calls them."""
    import importlib

    for module, name in commands:
        def refuse(args, _name=f"{module}.{name}"):
            raise AssertionError(f"{_name} was called again")

        monkeypatch.setattr(importlib.import_module(module), name, refuse)


def test_micro_runs_every_stage_and_a_rerun_skips_them(tmp_path, micro, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    for k, name in enumerate(["teacher", "extract", "student", "sweep"], start=1):
        assert f"stage {k}/4: {name}: d3llm " in printed
    for f in ("report.md", "sweep/sweep.json", "sweep/sweep.md", "sweep/sweep.png", "teacher/model.safetensors",
              "student/model.safetensors", "trajectories/manifest.json"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "d3llm distill --teacher" in report
    assert "Too few correct answers to compare" in report  # a 4-step teacher solves nothing
    record = json.loads((out / "pipeline.json").read_text())
    assert record["preset"] == "micro" and list(record["done"]) == ["teacher", "extract", "student", "sweep"]
    results = json.loads((out / "sweep" / "sweep.json").read_text())
    assert set(results["models"]) == {"teacher", "student"}

    _forbid(monkeypatch)
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 4 and "stage 3/4: student: done" in printed

    # a finished stage whose files changed is run again, and so is every later one (only the sweep here)
    (out / "sweep" / "sweep.md").write_text("edited\n")
    monkeypatch.undo()
    monkeypatch.setitem(presets.PRESETS, "micro", presets.micro)
    _forbid(monkeypatch, COMMANDS[:3])
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "stage 4/4: sweep: marked done, but the files in" in printed and "running it again" in printed
    assert (out / "sweep" / "sweep.md").read_text() != "edited\n"


def test_an_interrupted_distillation_resumes_there(tmp_path, micro, monkeypatch, capsys):
    from d3llm.distill.objective import DistillationObjective

    batch = DistillationObjective.batch

    def interrupted(self, step, *args, **kw):
        if step == 3:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return batch(self, step, *args, **kw)

    monkeypatch.setattr(DistillationObjective, "batch", interrupted)
    out = tmp_path / "run"
    assert main(["pipeline", "--out", str(out), *ARGS]) == 130
    captured = capsys.readouterr()
    assert "stage 3/4: student interrupted; run the same command again to resume at this stage" in captured.out
    assert "d3llm pipeline: interrupted" in captured.err
    assert list(json.loads((out / "pipeline.json").read_text())["done"]) == ["teacher", "extract"]

    monkeypatch.setattr(DistillationObjective, "batch", batch)
    _forbid(monkeypatch, COMMANDS[:2])
    assert main(["pipeline", "--out", str(out), *ARGS]) == 0
    captured = capsys.readouterr()
    assert "stage 1/4: teacher: done" in captured.out and "stage 2/4: extract: done" in captured.out
    assert "stage 3/4: student (resuming from its checkpoints): d3llm distill" in captured.out
    assert "--resume" in captured.out and "(step 2)" in captured.err  # the trainer's own resume line
    log = [json.loads(line) for line in (out / "student" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [2, 4]
    assert (out / "report.md").is_file()


def test_other_settings_in_the_same_folder_are_refused(tmp_path, micro, error_line):
    out = tmp_path / "run"
    Record.open(out, presets.micro().settings())
    assert main(["pipeline", "--out", str(out), "--preset", "tiny"]) == 2
    assert "holds a pipeline run with other settings (differs in: preset 'micro' (now 'tiny'))" in error_line(
        "pipeline")
    assert main(["pipeline", "--out", str(out), "--preset", "micro", "--family", "dream"]) == 2
    assert "family 'llada' (now 'dream')" in error_line("pipeline")
    stale = json.loads((out / "pipeline.json").read_text())
    stale["stages"][0]["command"] = [*stale["stages"][0]["command"], "--lr", "1"]
    (out / "pipeline.json").write_text(json.dumps(stale))
    assert main(["pipeline", "--out", str(out), "--preset", "micro"]) == 2
    assert "stage 'teacher': command" in error_line("pipeline")

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    assert main(["pipeline", "--out", str(other), "--preset", "micro"]) == 2
    assert "is not empty and holds no pipeline.json" in error_line("pipeline")
    assert main(["pipeline", "--out", str(tmp_path / "x"), "--preset", "micro", "--threads", "0"]) == 2
    assert "--threads must be a positive" in error_line("pipeline")


def test_presets_run_the_existing_commands():
    """Every stage is a command the parser accepts; the default preset is the model cards' recipe."""
    from d3llm.cli.main import build_parser

    parser = build_parser()
    for build in (presets.tiny, presets.default, presets.micro):
        for family in presets.FAMILIES:
            preset = build(family)
            for stage in preset.stages:
                args = parser.parse_args(stage.argv("/runs/p"))
                assert getattr(args, "out").startswith("/runs/p/")
    default = {s.name: s for s in presets.default().stages}
    assert list(default) == ["teacher-base", "teacher", "extract-t48", "extract-t128", "extract-t64c", "student",
                             "sweep"]
    assert "--out {out}/student --steps 1200 --batch-size 32 --lr 5e-4" in " ".join(default["student"].command)
    assert "--limit 2560 --gen-length 48" in " ".join(default["extract-t48"].command)
    assert presets.tiny("dream").stages[0].command[2] == "dream-small"


def test_the_report_flags_too_few_correct_answers():
    from d3llm.pipeline.report import too_few_correct

    models = [{"model": "teacher", "best_accuracy": 19.0}, {"model": "student", "best_accuracy": 20.0}]
    assert [m["model"] for m in too_few_correct(models, 100)] == ["teacher"]
    assert too_few_correct(models, 500) == []  # 95 of 500 right is enough
