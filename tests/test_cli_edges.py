"""The command line's finished edges: every ``--help``, shipped model names from any folder, did-you-mean for every
choice, one empty-prompt rule, the raw-text hint for chat models, warnings that name their own command."""

import argparse
import re
import warnings

import pytest

import d3llm
from d3llm.assets import SHIPPED
from d3llm.cli.main import build_parser, main


def _subcommands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


COMMANDS = list(_subcommands(build_parser()))


def test_every_command_is_listed():
    names = {c[0] for c in COMMANDS}
    assert {"aup", "chat", "demo", "eval", "generate", "info", "lm-eval", "models", "pipeline", "serve", "sweep",
            "train", "trajectories"} <= names
    assert ("trajectories", "extract") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_of_every_command_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_shipped_names_resolve_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "student", "--limit", "4", "--no-progress", "--json"]) == 0
    assert '"n": 4' in capsys.readouterr().out
    assert main(["eval", "--model", "student", "--limit", "2", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]  # tokens per forward and positions forwarded per token
    assert re.search(r"TPF \d+\.\d\d  \d+\.\d positions/token  ", line), line
    assert d3llm.load_model("ar").family == "llama"
    assert d3llm.load_tokenizer("teacher").mask_token_id is not None
    assert main(["info", "arith-student", "--json"]) == 0
    assert str(SHIPPED[1].folder) in capsys.readouterr().out


def test_a_real_path_wins_over_a_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d3llm.save_model(d3llm.build_model("llada-tiny", seed=0), tmp_path / "student")
    assert main(["info", "student", "--json"]) == 0
    assert '"folder": "student"' in capsys.readouterr().out


def test_an_unknown_name_says_what_exists(capsys):
    assert main(["eval", "--model", "studnt", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'student'?" in err and "shipped models: teacher, student, ar" in err
    with pytest.raises(d3llm.CheckpointError, match="shipped models"):
        d3llm.load_model("no-such-model")


def test_models_lists_the_shipped_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for m in SHIPPED:
        assert m.name in out and str(m.folder) in out
    assert "926,080 parameters" in out and "llama" in out


@pytest.mark.parametrize("argv, suggestion", [
    (["eval", "--method", "multiblock"], "multi_block"),
    (["generate", "--method", "fastdllm", "x"], "fast_dllm"),
    (["evl"], "eval"),
    (["trajectories", "extrct"], "extract"),
    (["train", "--objective", "diffusio"], "diffusion"),
])
def test_did_you_mean_for_every_choice(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"(did you mean '{suggestion}'?)" in capsys.readouterr().err


@pytest.mark.parametrize("chat", [[], ["--chat"]])
@pytest.mark.parametrize("prompt", ["", "   "])
def test_one_empty_prompt_rule(chat, prompt, capsys):
    assert main(["generate", *chat, prompt]) == 2
    assert "prompt 0 is empty" in capsys.readouterr().err


def test_raw_text_to_a_chat_model_gets_a_hint():
    with pytest.warns(UserWarning, match="pass --chat"):
        assert main(["generate", "--max-new-tokens", "16", "--block-size", "16", "Tom has 3 apples."]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with --chat: no hint
        assert main(["generate", "--chat", "--max-new-tokens", "16", "--block-size", "16", "Tom has 3 apples."]) == 0


def test_warnings_name_their_own_command_and_are_restored():
    before = warnings.formatwarning
    with pytest.warns(UserWarning) as record:
        assert main(["generate", "--max-new-tokens", "16", "--block-size", "16", "Tom has 3 apples."]) == 0
    assert warnings.formatwarning is before  # a later command or library call does not print "d3llm generate: ..."
    from d3llm.cli.main import _one_line_warnings

    with _one_line_warnings("generate"):
        line = warnings.formatwarning(record[0].message, UserWarning, "f.py", 1)
    assert line.startswith("d3llm generate: warning: this model has a chat template")
