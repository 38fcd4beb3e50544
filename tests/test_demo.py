"""``d3llm demo``: teacher, student and AR side by side on held-out problems, the table and the PNG; the random-model
tour."""

import re

import pytest

from d3llm.cli.main import main


def test_demo_compares_teacher_student_and_ar(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--problems", "2", "--held-out", "10", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.count("Q: ") == 2
    # vanilla spends one forward per canvas position (48); the multi_block labels show each folder's own threshold
    assert text.count("teacher, one token per forward      48 forwards") == 2
    for label in ("teacher, multi_block (entropy 0.2)", "student, multi_block (entropy 0.1)",
                  "AR baseline, one token per forward"):
        assert text.count(label) == 3  # two answers and the table's row
    assert len(re.findall(r"(correct|wrong \(gold \d+\))", text)) == 8
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)), float(m.group(5)))
            for m in re.finditer(r"\n  ([a-zA-Z][^\n]*?)\s+([\d.]+)%\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)(?=\n)", text)}
    assert len(rows) == 4, text
    teacher = rows["teacher, multi_block (entropy 0.2)"]
    student = rows["student, multi_block (entropy 0.1)"]
    assert student[1] > teacher[1] and student[2] > teacher[2]  # more tokens per forward, a larger AUP
    assert rows["teacher, one token per forward"][1] < 1.0  # the padding after the answer costs forwards too
    assert "tokens/forward  answer tokens" in text and "AUP " in text
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "sweep.json").is_file()
    assert f"the curves: {out / 'sweep.png'}" in text


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_demo_random_tour(family, capsys):
    assert main(["demo", "--random", "--family", family]) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"max \|logit diff\| = (\S+)", out).group(1))
    assert diff < 1e-5


def test_demo_family_without_random_is_an_error(capsys):
    assert main(["demo", "--family", "dream"]) == 2
    assert "add --random" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--problems", "--held-out"])
def test_demo_bad_count(flag, capsys):
    assert main(["demo", flag, "0"]) == 2
    assert f"{flag} must be positive" in capsys.readouterr().err
