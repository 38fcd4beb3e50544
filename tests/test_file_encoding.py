"""A JSON, YAML or JSONL file that is not UTF-8 (or not valid JSON) is an error naming the file and the place (byte
offset and line, or line and column), from the library and as one line from every command that reads it, never a
bare UnicodeDecodeError."""

import json
import re
import shutil

import pytest

import d3llm
from d3llm import CheckpointError, ConfigError, D3LLMError
from d3llm.cli.main import main
from distill_helpers import tiny_teacher

LATIN1 = b"caf\xe9"  # "café" as Latin-1: 0xe9 starts a UTF-8 sequence that the next byte does not continue


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("encoding"))


@pytest.fixture
def folder(clean_folder, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(clean_folder, copy)
    return copy


def _latin1_into(file, data: bytes | None = None) -> str:
    """Put a Latin-1 string into a JSON object file (written anew when ``data`` is given); returns the message
    expected for it: the file, the byte, its offset and line."""
    head = b'{\n  "comment": "' + LATIN1[:3]
    body = data if data is not None else file.read_bytes()
    file.write_bytes(head + LATIN1[3:] + b'",' + body.lstrip()[1:])
    return rf"{re.escape(str(file))} is not UTF-8 text: byte 0xe9 at offset {len(head)} \(line 2\) cannot be decoded"



@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer_config.json"])
def test_non_utf8_folder_files_name_the_file_and_byte(folder, name, error_line, monkeypatch):
    file = folder / name
    expected = _latin1_into(file, None if file.exists() else json.dumps({"max_new_tokens": 16}).encode())
    loader = d3llm.load_tokenizer if name == "tokenizer_config.json" else d3llm.load_model
    with pytest.raises(CheckpointError, match=expected):
        loader(folder)
    assert main(["generate", "--model", str(folder), "--threads", "1", "1 2"]) == 2
    assert re.search(expected, error_line("generate"))
    monkeypatch.setattr(d3llm, "Engine", lambda *a, **k: pytest.fail("the server must not start"))
    assert main(["serve", "--model", str(folder)]) == 2
    assert re.search(expected, error_line("serve"))
    if name != "tokenizer_config.json":  # info reads no tokenizer
        assert main(["info", str(folder)]) == 2
        assert re.search(expected, error_line("info"))


def test_invalid_json_names_line_and_column(folder):
    (folder / "config.json").write_text('{\n  "model_type": "llada",\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON \(Expecting property name enclosed in "
                                              r"double quotes at line 3, column 3\)"):
        d3llm.load_model(folder)


def test_non_utf8_tokenizer_json_is_named(folder):
    """tokenizer.json is parsed by the tokenizers library, whose error names no file."""
    data = (folder / "tokenizer.json").read_bytes()
    at = data.index(b'"') + 1
    (folder / "tokenizer.json").write_bytes(data[:at] + b"\xe9" + data[at + 1:])
    with pytest.raises(CheckpointError, match=rf"tokenizer.json is not UTF-8 text: byte 0xe9 at offset {at} "
                                              rf"\(line \d+\)"):
        d3llm.load_tokenizer(folder)


def test_non_utf8_chat_template(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]  # so that chat_template.jinja is read
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_bytes(b"{{ messages }} " + LATIN1)
    with pytest.raises(CheckpointError, match=r"chat_template.jinja is not UTF-8 text: byte 0xe9 at offset 18 "
                                              r"\(line 1\)"):
        d3llm.load_tokenizer(folder)


def test_non_utf8_jsonl_dataset_names_the_line(tmp_path, error_line):
    from d3llm.tasks import load_dataset

    file = tmp_path / "data.jsonl"
    first = json.dumps({"question": "q1", "answer": "#### 3"}).encode() + b"\n"
    file.write_bytes(first + b'{"question": "' + LATIN1 + b'", "answer": "#### 4"}\n')
    expected = rf"data.jsonl is not UTF-8 text: byte 0xe9 at offset {len(first) + 17} \(line 2\)"
    with pytest.raises(ConfigError, match=expected):
        load_dataset(str(file))
    assert main(["eval", "--task", str(file)]) == 2
    assert re.search(expected, error_line("eval"))


def test_non_utf8_sweep_config_and_results(tmp_path, error_line):
    config = tmp_path / "sweep.yaml"
    config.write_bytes(b"task: arith\n# " + LATIN1 + b"\n")
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "sweep.yaml is not UTF-8 text: byte 0xe9 at offset 17 (line 2)" in error_line("sweep")
    results = tmp_path / "sweep.json"
    expected = _latin1_into(results, b'{"kind": "d3llm-sweep"}')
    assert main(["aup", str(results)]) == 2
    assert re.search(expected, error_line("aup"))


def test_non_utf8_trajectory_files(tmp_path, error_line):
    from d3llm.distill import read_trajectories

    rows = tmp_path / "reference.json"
    rows.write_bytes(b'[{"question": "' + LATIN1 + b'"}]')
    assert main(["trajectories", "import-reference", str(rows), "--out", str(tmp_path / "traj")]) == 2
    assert "reference.json is not UTF-8 text: byte 0xe9 at offset 18 (line 1)" in error_line("trajectories")
    folder = tmp_path / "set"
    folder.mkdir()
    expected = _latin1_into(folder / "manifest.json", b'{"rows": 0}')
    with pytest.raises(D3LLMError, match=expected):
        read_trajectories(folder)


def test_non_utf8_training_checkpoint_manifest(tmp_path):
    from d3llm.training.checkpoint import verify_checkpoint

    folder = tmp_path / "step-000002"
    folder.mkdir()
    expected = _latin1_into(folder / "manifest.json", b'{"files": {}}')
    with pytest.raises(CheckpointError, match=expected + ".*; delete .*step-000002"):
        verify_checkpoint(folder)
