"""``d3llm generate`` on a tiny trained model folder with its own tokenizer."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import d3llm
from d3llm.cli.display import legend
from d3llm.cli.main import main
from decoding_models import EOS, MASK, SEP

WORDS = [str(d) for d in range(10)] + ["a", "b", "c", "|", "<eos>", "<mask>"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, trained_models):
    out = tmp_path_factory.mktemp("toy")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<eos>",
        "chat_template": "{% for m in messages %}{{ m['content'] }} |{% endfor %}",
    }))
    assert (WORDS.index("|"), WORDS.index("<eos>"), WORDS.index("<mask>")) == (SEP, EOS, MASK)
    d3llm.save_model(trained_models["llada"], out, tokenizer=out)
    return out


def test_generate_prints_text_and_figures(folder, capsys):
    code = main(["generate", "--model", str(folder), "--max-new-tokens", "32", "--block-size", "8",
                 "--threshold", "0.5", "--early-stop", "3 1 4 1 5 |"])
    out = capsys.readouterr().out
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("[multi_block] NFE ") and "TPF" in last and "tokens/s" in last


def test_generate_json_and_batch(folder, capsys):
    code = main(["generate", "--model", str(folder), "--method", "fast_dllm", "--max-new-tokens", "32",
                 "--block-size", "8", "--steps", "32", "--cache", "prefix", "--json", "3 1 4 |", "9 9 |"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and len(record["texts"]) == 2 and len(record["nfe"]) == 2
    assert record["params"]["cache"] == "prefix" and record["tpf"] > 0


def test_show_steps_draws_every_step(folder, capsys):
    code = main(["generate", "--model", str(folder), "--method", "vanilla", "--max-new-tokens", "16",
                 "--block-size", "8", "--steps", "16", "--show-steps", "--json", "2 7 1 |"])
    out = capsys.readouterr().out.splitlines()
    frames = [line for line in out if line.startswith("step ")]
    record = json.loads(out[-1])
    assert code == 0 and len(frames) == record["nfe"][0] == 16
    assert out[0] == legend(live=False) and out.count(out[0]) == 1  # the key of the glyphs, once, first
    assert "░ masked" in out[0] and "| between blocks" in out[0] and "· end of text" in out[0]
    masks = [line.count("░") for line in frames]
    assert masks == list(range(15, -1, -1))  # one position filled per step
    assert all(" | " in line for line in frames)  # block separator


def test_chat_template_is_applied(folder, capsys):
    assert main(["generate", "--model", str(folder), "--chat", "--max-new-tokens", "8", "--block-size", "8",
                 "--json", "5 3"]) == 0
    assert json.loads(capsys.readouterr().out)["texts"]


def test_bad_parameter_is_one_clear_line(folder, capsys):
    code = main(["generate", "--model", str(folder), "--threshold", "-1", "1 2 |"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "d3llm generate: error: multi_block: threshold=-1.0 is outside >= 0.0 (an entropy threshold in nats)"


def test_missing_model_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "none"), "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
