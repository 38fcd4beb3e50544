"""The built-in task's tokenizer: exact round trips, digit-level numbers, LLaDA-style special tokens and chat
template, loadable by d3llm.load_tokenizer and transformers' AutoTokenizer offline."""

import json
import os
import subprocess
import sys

import pytest

import d3llm
from d3llm.tasks import arith
from d3llm.tasks.tokenizer import CHAT_TEMPLATE, build_tokenizer, task_vocabulary


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arith_tok")
    build_tokenizer(folder)
    return folder


def test_files_and_special_tokens(tok_dir):
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["add_bos_token"] is False
    tok = d3llm.load_tokenizer(tok_dir)
    assert len(tok) == len(task_vocabulary())
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.mask_token == "<|mdm_mask|>" and tok.bos_token == "<|startoftext|>"
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")}
    assert len(set(ids.values()) | {tok.eos_token_id, tok.mask_token_id, tok.unk_token_id}) == 6


def test_round_trip_without_unknown_tokens(tok_dir):
    tok = d3llm.load_tokenizer(tok_dir)
    for split, n in (("train", 600), ("test", 200)):
        for p in arith.make_problems(split, n, seed=5):
            for text in (p.question, p.answer):
                ids = tok.encode(text, add_special_tokens=False)
                assert tok.unk_token_id not in ids, text
                assert tok.decode(ids) == text
                assert len(ids) == arith.count_tokens(text)


def test_numbers_are_single_digits(tok_dir):
    tok = d3llm.load_tokenizer(tok_dir)
    tokens = tok.convert_ids_to_tokens(tok.encode("Mia has 305 pens.\n#### 305", add_special_tokens=False))
    assert tokens == ["Mia", " has", " 3", "0", "5", " pens", ".", "\n", "####", " 3", "0", "5"]
    assert tok.convert_ids_to_tokens(tok.encode("Hello has", add_special_tokens=False)) == ["<|unk|>", " has"]


def test_chat_template(tok_dir):
    tok = d3llm.load_tokenizer(tok_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": " Tom has 3 pens. "}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nTom has 3 pens.<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[:6]) == ["<|startoftext|>", "<|start_header_id|>", "user",
                                                  "<|end_header_id|>", "\n", "\n"]
    assert tok.decode(ids, skip_special_tokens=True) == "user\n\nTom has 3 pens.assistant\n\n"


def test_auto_tokenizer_offline(tok_dir):
    """A fresh interpreter with the hub disabled loads the folder with AutoTokenizer and encodes identically."""
    text = arith.make_problem("test", 0).answer
    code = (
        "import sys; from transformers import AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(tok_dir)!r})\n"
        f"ids = t.encode({text!r}, add_special_tokens=False)\n"
        "p = t.apply_chat_template([{'role': 'user', 'content': 'Tom has 3 pens.'}], tokenize=False, "
        "add_generation_prompt=True)\n"
        "print(ids); print(t.decode(ids) == " + repr(text) + ", t.mask_token_id, t.eos_token_id, p.count('<|eot_id|>'))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    ids_line, check_line = out.stdout.strip().splitlines()[-2:]
    tok = d3llm.load_tokenizer(tok_dir)
    assert json.loads(ids_line) == tok.encode(text, add_special_tokens=False)
    assert check_line == f"True {tok.mask_token_id} {tok.eos_token_id} 1"
