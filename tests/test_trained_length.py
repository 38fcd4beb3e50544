"""``max_trained_new_tokens`` in ``generation_config.json``: read and checked by ``GenerationConfig``, never handed to
a decoder, and one :class:`d3llm.LengthBeyondTrainingWarning` per process from ``d3llm.generate`` (and so from
``d3llm generate``) when a canvas exceeds it. The server's warning: tests/test_serve_max_tokens.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings

import pytest

import d3llm
from d3llm.assets import default_model_path
from d3llm.decoding import api
from d3llm.models.generation_config import GenerationConfig
from d3llm.tasks import load_dataset

TRAINED = 32  # declared in the copies below: the teacher's own default canvas (48) is already beyond it


def teacher_copy(folder, **keys):
    """A copy of the shipped teacher whose generation_config.json has ``keys`` added."""
    shutil.copytree(default_model_path(), folder)
    file = folder / "generation_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **keys}, indent=2))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return teacher_copy(tmp_path_factory.mktemp("trained") / "teacher", max_trained_new_tokens=TRAINED)


def beyond_training(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, d3llm.LengthBeyondTrainingWarning)]


def test_the_key_is_read_and_is_no_decoder_parameter(folder):
    config = GenerationConfig.load(folder)
    assert config.max_trained_new_tokens == TRAINED
    assert GenerationConfig.load(default_model_path()).max_trained_new_tokens == 256  # the robust teacher's mix
    assert GenerationConfig.from_dict({"max_trained_new_tokens": None}).max_trained_new_tokens is None
    for method in ("multi_block", "fast_dllm", "vanilla"):
        assert "max_trained_new_tokens" not in config.defaults_for(method)
    # a decoder would refuse an unknown parameter given to it: the key never reaches one
    with pytest.raises(d3llm.GenerationError, match="max_trained_new_tokens"):
        d3llm.generate(d3llm.load_model(folder), [[7, 8]], max_trained_new_tokens=TRAINED)


@pytest.mark.parametrize("value", [0, -16, 2.5, "48", True, [48]])
def test_a_bad_value_is_an_error_naming_the_file_and_key(tmp_path, value):
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 48,
                                                                 "max_trained_new_tokens": value}))
    file = str(tmp_path / "generation_config.json")
    with pytest.raises(d3llm.CheckpointError, match="key 'max_trained_new_tokens' must be a positive integer") as info:
        GenerationConfig.load(tmp_path)
    assert str(info.value).startswith(f"{file}: ") and repr(value) in str(info.value)
    with pytest.raises(d3llm.CheckpointError, match=f"^{re.escape(file)}: key"):
        _ = GenerationConfig(values={"max_trained_new_tokens": value}, path=file).max_trained_new_tokens


def test_generate_warns_once_per_process(folder, monkeypatch):
    monkeypatch.setattr(api, "_warned_beyond_training", False)  # as in a fresh process
    model = d3llm.load_model(folder)
    ids = d3llm.encode_prompt(d3llm.load_tokenizer(folder), load_dataset("arith:test")[0].question)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d3llm.generate(model, [ids], max_new_tokens=TRAINED)  # at the trained length: fine
        d3llm.generate(model, [ids], max_new_tokens=16)
        assert beyond_training(record) == []
        d3llm.generate(model, [ids, ids], max_new_tokens=64)
        d3llm.generate(model, [ids], max_new_tokens=48)
    messages = beyond_training(record)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"the model was trained on canvases up to {TRAINED} new tokens "
                                  f"(max_trained_new_tokens in {folder / 'generation_config.json'}) and this request "
                                  f"asks for 64 (max_new_tokens), so quality may degrade")
    assert record[0].filename == __file__  # it points at the caller of generate


def test_generate_never_warns_without_the_key(monkeypatch):
    monkeypatch.setattr(api, "_warned_beyond_training", False)
    model = d3llm.load_model(default_model_path())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d3llm.generate(model, [[7, 8, 9]], max_new_tokens=256)
    assert beyond_training(record) == []


def test_the_command_warns_once_on_one_line(folder):
    questions = [load_dataset("arith:test")[i].question for i in range(2)]
    done = subprocess.run([sys.executable, "-m", "d3llm.cli.main", "generate", "--model", str(folder), "--chat",
                           "--threads", "1", *questions], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith(f"d3llm generate: warning: the model was trained on canvases up "
                                                   f"to {TRAINED} new tokens"), done.stderr
    assert "asks for 48 (max_new_tokens)" in lines[0]  # the folder's own default canvas
    assert done.stdout.count("####") == 2  # and it decoded both
