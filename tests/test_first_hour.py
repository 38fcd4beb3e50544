"""What a new user meets first: decoding defaults from the model folder, files that keep the umask, threads, errors
before the work, Hugging Face habits in the Python API, and a CLI that starts fast and explains itself."""

import json
import os
import stat
import subprocess
import sys
import warnings

import pytest
import torch

import d3llm
from d3llm import ConfigError, GenerationConfig, GenerationError
from d3llm.assets import default_model_path
from d3llm.cli.main import main
from d3llm.decoding import METHODS
from d3llm.models.checkpoint import atomic_write_text
from d3llm.tasks import build_tokenizer, load_dataset, write_jsonl
from d3llm.training.config import TrainConfig

TEACHER = default_model_path()


# -- decoding defaults from generation_config.json ------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny LLaDA folder whose generation_config.json asks for vanilla decoding of 16 tokens in blocks of 8."""
    out = tmp_path_factory.mktemp("gencfg")
    tok = build_tokenizer(out)
    model = d3llm.build_model("llada-tiny", vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id, max_sequence_length=256)
    config = {"max_new_tokens": 16, "block_size": 8, "method": "vanilla", "threshold": 0.3,
              "methods": {"fast_dllm": {"threshold": 0.8, "cache": "prefix"}}, "transformers_version": "4.49.0"}
    d3llm.save_model(model, out, tokenizer=out, generation_config=config)
    return out


def test_defaults_come_from_the_folder_and_explicit_arguments_win(folder):
    model = d3llm.load_model(folder)
    assert isinstance(model.generation_config, GenerationConfig) and model.generation_config.method == "vanilla"
    r = d3llm.generate(model, [[7, 8, 9]])
    assert r.method == "vanilla"
    assert (r.params["max_new_tokens"], r.params["block_size"], r.params["steps"]) == (16, 8, 16)
    assert r.sequences.shape[1] == 3 + 16 and int(r.nfe[0]) == 16  # one token per forward
    r = d3llm.generate(model, [[7, 8, 9]], max_new_tokens=24, steps=12)
    assert (r.params["max_new_tokens"], r.params["steps"], r.params["block_size"]) == (24, 12, 8)
    assert int(r.nfe[0]) == 12


def test_steps_follows_max_new_tokens_unless_set(folder):
    model = d3llm.load_model(folder)
    assert d3llm.generate(model, [[7, 8]], max_new_tokens=32).params["steps"] == 32
    tiny = d3llm.build_model("llada-tiny")  # no folder: the built-in defaults
    r = d3llm.generate(tiny, [[7, 8]], "vanilla", max_new_tokens=32, block_size=16)
    assert r.params["steps"] == 32 and int(r.nfe[0]) == 32
    assert d3llm.generate(tiny, [[7, 8]], "vanilla", max_new_tokens=32, block_size=16, steps=8).params["steps"] == 8


def test_threshold_applies_to_the_folders_method_only_and_methods_sections(folder):
    model = d3llm.load_model(folder)
    be = d3llm.generate(model, [[7, 8]], "block_entropy")
    assert be.params["threshold"] == 0.5 and be.params["max_new_tokens"] == 16  # built-in threshold, folder length
    fd = d3llm.generate(model, [[7, 8]], "fast_dllm")
    assert (fd.params["threshold"], fd.params["cache"]) == (0.8, "prefix")
    mb = d3llm.generate(model, [[7, 8]], "multi_block")
    assert (mb.params["threshold"], mb.params["block_size"], mb.params["max_new_tokens"]) == (0.5, 8, 16)


def test_a_default_the_user_never_set_is_called_a_default(folder):
    model = d3llm.load_model(folder)
    source = str(folder / "generation_config.json")
    with pytest.raises(GenerationError) as info:
        d3llm.generate(model, [[7, 8]], max_new_tokens=20)
    assert f"max_new_tokens=20 is not a multiple of block_size=8 (default from {source})" in str(info.value)
    tiny = d3llm.build_model("llada-tiny")
    with pytest.raises(GenerationError, match=r"max_new_tokens=48 is not a multiple of block_size=32 "
                                              r"\(built-in default\)"):
        d3llm.generate(tiny, [[7, 8]], max_new_tokens=48)


def test_bad_generation_config_files_name_the_key(tmp_path, folder):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "generation_config.json").write_text(json.dumps({"method": "multiblock"}))
    with pytest.raises(d3llm.CheckpointError, match=r"generation_config.json: key 'method' is 'multiblock'; "
                                                    r"expected one of vanilla, block_entropy"):
        d3llm.load_model(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"methods": {"fastdllm": {}}}))
    with pytest.raises(d3llm.CheckpointError, match=r"key 'methods' names unknown method\(s\) 'fastdllm'"):
        d3llm.load_model(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"threshold": "low", "method": "multi_block"}))
    with pytest.raises(GenerationError, match=r"threshold must be a number, got 'low' \(default from .*"
                                              r"generation_config.json\)"):
        d3llm.generate(d3llm.load_model(tmp_path), [[7, 8]])


def test_do_sample_false_means_greedy_and_eos_comes_from_the_file():
    config = GenerationConfig.from_dict({"do_sample": False, "temperature": 0.7, "eos_token_id": [3, 4]})
    assert config.defaults_for("multi_block")["temperature"] == 0.0 and config.eos_token_id == 3


def test_the_teacher_decodes_well_with_no_flags(capsys):
    assert main(["eval", "--limit", "20", "--json", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "multi_block" and summary["params"]["max_new_tokens"] == 48
    assert summary["strict"] >= 95.0 and summary["tpf"] > 4


def test_methods_lists_agree():
    from d3llm.cli.options import METHODS as CLI_METHODS

    assert CLI_METHODS == list(METHODS)


# -- files keep the user's umask ------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        d3llm.save_model(d3llm.build_model("llada-tiny"), tmp_path / "m", generation_config={"max_new_tokens": 8})
        atomic_write_text(tmp_path / "eval.json", "{}")
    finally:
        os.umask(old)
    files = [tmp_path / "eval.json", *(tmp_path / "m").iterdir()]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}


# -- threads --------------------------------------------------------------------------------------------------------

def test_threads_flag_and_the_small_model_default(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["generate", "--threads", "2", "--json", "1 2"]) == 0
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)
        assert main(["generate", "--json", "1 2"]) == 0
        assert torch.get_num_threads() == 1  # the teacher is tiny: one thread by default
        assert main(["generate", "--threads", "0", "1 2"]) == 2
        assert "--threads must be a positive number of threads, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# -- errors before the work -----------------------------------------------------------------------------------------

def test_unscorable_jsonl_answers_fail_at_load_time(tmp_path, capsys, monkeypatch):
    file = tmp_path / "data.jsonl"
    file.write_text(json.dumps({"question": "q1", "answer": "#### 3"}) + "\n"
                    + json.dumps({"question": "q2", "answer": "twenty seven"}) + "\n")
    monkeypatch.setattr(d3llm, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    assert main(["eval", "--task", str(file)]) == 2
    err = capsys.readouterr().err
    assert f"{file}:2: field 'answer' ('twenty seven') holds no number to score against" in err
    assert len(load_dataset(str(file))) == 2  # training needs no gold number


def test_out_must_be_a_file_in_an_existing_folder(tmp_path, capsys):
    assert main(["eval", "--limit", "1", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; expected a file path" in capsys.readouterr().err
    target = tmp_path / "missing" / "eval.json"
    assert main(["eval", "--limit", "1", "--out", str(target)]) == 2
    assert f"the folder {target.parent} does not exist" in capsys.readouterr().err
    assert not target.parent.exists()


def test_a_hub_id_says_hubs_are_not_reached(capsys):
    assert main(["generate", "--model", "GSAI-ML/LLaDA-8B-Instruct", "hi"]) == 2
    err = capsys.readouterr().err
    assert "looks like a Hugging Face hub id, but d3llm never downloads: download the checkpoint first" in err


def test_unknown_words_are_reported(capsys):
    with pytest.warns(UserWarning, match=r"3 word\(s\) of the prompt are not in the tokenizer's vocabulary and "
                                         r"became <\|unk\|>: 'bananas', 'giraffe'$"):
        assert main(["generate", "--chat", "Mia has 12 bananas with 3 giraffe bananas"]) == 0


# -- Python API habits ----------------------------------------------------------------------------------------------

def test_batch_encoding_and_texts():
    model, tok = d3llm.load_model(TEACHER), d3llm.load_tokenizer(TEACHER)
    question = load_dataset("arith:test", size=1)[0].question
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_dict=True)
    ids = d3llm.encode_prompt(tok, question)
    from_enc = d3llm.generate(model, enc)
    from_ids = d3llm.generate(model, [ids])
    assert from_enc.tokens == from_ids.tokens
    pt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                 return_dict=True, return_tensors="pt")
    assert d3llm.generate(model, pt).tokens == from_ids.tokens
    assert from_ids.texts(tok) == [tok.decode(from_ids.tokens[0], skip_special_tokens=True)]
    with pytest.raises(GenerationError, match="a mapping without an 'input_ids' entry"):
        d3llm.generate(model, {"ids": [1, 2]})


# -- the CLI --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["generate"], ["eval"], ["train"], ["info"], ["demo"]])
def test_help_is_clean(command):
    out = subprocess.run([sys.executable, "-m", "d3llm.cli.main", *command, "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "(default: None)" not in out and "``" not in out and ":func:" not in out
    for line in out.splitlines():
        assert line.count("(default") <= 1, line
    if command == ["generate"]:
        assert ("--method {vanilla,block_entropy,fast_dllm,multi_block,eb_sampler,fast_dllm_factor,hierarchy,local_leap,"
                "credit,klass,adablock,autoregressive}") in out
        assert "decoder (default: the model folder's method, else multi_block)" in " ".join(out.split())


def test_version_and_help_do_not_import_torch():
    code = ("import sys\nfrom d3llm.cli.main import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"d3llm {d3llm.__version__}" in out.stdout


def test_info_defaults_to_the_teacher_and_shows_its_decoding(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["folder"] == str(TEACHER) and info["generation_config"]["method"] == "multi_block"
    assert main(["info"]) == 0
    assert "decoding defaults" in capsys.readouterr().out
    from d3llm.assets import ar_model_path

    assert main(["info", "--json", "--model", str(ar_model_path())]) == 0  # --model, as every command takes it
    assert json.loads(capsys.readouterr().out)["family"] == "llama"
    assert main(["info", str(TEACHER), "--model", str(ar_model_path())]) == 2
    assert "two model folders given" in capsys.readouterr().err


def test_dash_reads_the_prompt_from_stdin():
    question = load_dataset("arith:test", size=1)[0]
    out = subprocess.run([sys.executable, "-m", "d3llm.cli.main", "generate", "--chat", "--json", "--threads", "1",
                          "-"], input=question.question + "\n", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["texts"][0].strip().endswith(f"#### {question.gold}")


def test_warmup_scales_down_for_short_runs_and_too_long_warmups_are_refused():
    assert TrainConfig(out="x").warmup == 200
    assert TrainConfig(out="x", steps=50).warmup == 5
    assert TrainConfig(out="x", steps=50, warmup_steps=7).warmup == 7
    with pytest.raises(ConfigError, match=r"--warmup-steps 80 is more than --steps 50"):
        TrainConfig(out="x", steps=50, warmup_steps=80).validate()


def test_a_run_folder_has_one_tokenizer_and_a_generation_config(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "llada-tiny", "--steps", "2", "--batch-size", "4",
                 "--eval-every", "100", "--save-every", "2", "--threads", "1", "--no-progress"]) == 0
    assert not (out / "tokenizer").exists() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "generation_config.json").read_text())
    assert (config["max_new_tokens"], config["block_size"], config["method"]) == (48, 16, "multi_block")
    model = d3llm.load_model(out)
    assert model.generation_config.values == config
    assert d3llm.load_model(out / "checkpoints" / "step-000002" / "model").generation_config.values == config


def test_load_model_builds_no_random_weights(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.init, "normal_", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda *a, **k: calls.append(a))
    d3llm.load_model(TEACHER)
    assert calls == []


def test_warning_free_reference_snippet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = d3llm.encode_prompt(d3llm.load_tokenizer(TEACHER), load_dataset("arith:test", size=1)[0].question)
    assert ids and write_jsonl  # the task's own text never hits an unknown word
