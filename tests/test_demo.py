"""``d3llm demo``: the shipped teacher on held-out problems, and the random-model tour."""

import re

import pytest

from d3llm import ConfigError
from d3llm.cli.main import main


def test_demo_solves_held_out_problems_with_the_teacher(capsys):
    assert main(["demo", "--problems", "2"]) == 0
    out = capsys.readouterr().out
    assert "the shipped teacher: llada" in out
    assert out.count("Q: ") == 2
    # vanilla spends one forward per position (48); each answer ends with the #### line, marked right or wrong
    assert out.count("[vanilla, one token per forward] 48 forwards") == 2
    assert out.count("[d3LLM multi-block, entropy <= 0.2, KV cache delay 2]") == 2  # generation_config.json
    assert len(re.findall(r"\n    #### \d+", out)) == 4
    assert len(re.findall(r"(correct|wrong \(gold \d+\))", out)) == 4


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_demo_random_tour(family, capsys):
    assert main(["demo", "--random", "--family", family]) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"max \|logit diff\| = (\S+)", out).group(1))
    assert diff < 1e-5


def test_demo_bad_count():
    with pytest.raises(ConfigError, match="--problems must be positive"):
        from d3llm.cli.demo import run

        run(type("A", (), {"problems": 0, "random": False, "family": "llada", "threads": None})())
