"""The shipped autoregressive baseline (d3llm/assets/arith-ar) against transformers' own Llama on the same folder:
identical logits, and greedy decoding token for token the same as ``LlamaForCausalLM.generate``."""

import json

import pytest
import torch
from transformers import LlamaForCausalLM

import d3llm
from d3llm.assets import ASSETS
from d3llm.tasks import load_dataset, score

FOLDER = ASSETS / "arith-ar"


@pytest.fixture(scope="module")
def shipped():
    ours = d3llm.load_model(FOLDER, device="cpu")
    theirs = LlamaForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    tokenizer = d3llm.load_tokenizer(FOLDER)
    test = load_dataset("arith:test")
    prompts = [d3llm.encode_prompt(tokenizer, test[i].question) for i in range(8)]
    return ours, theirs, tokenizer, test, prompts


def test_the_folder_is_a_plain_llama_checkpoint():
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 4 and config["torch_dtype"] == "float32"
    generation = json.loads((FOLDER / "generation_config.json").read_text())
    assert generation["method"] == "autoregressive" and generation["max_new_tokens"] == 48
    assert generation["eos_token_id"] == config["eos_token_id"]


def test_transformers_logits_are_identical(shipped):
    ours, theirs, tokenizer, test, prompts = shipped
    # prompt and the gold answer, as the model sees them in training (fp32)
    ids = torch.tensor([prompts[0] + tokenizer.encode(test[0].answer, add_special_tokens=False)])
    with torch.no_grad():
        a = ours(ids).logits
        b = theirs(ids).logits
    assert (a[:, 1:] - b[:, :-1]).abs().max() < 1e-5
    assert a.abs().max() > 5  # a trained model's logits, not a near-uniform one


def test_greedy_decoding_equals_transformers_generate(shipped):
    ours, theirs, tokenizer, test, prompts = shipped
    eos = tokenizer.eos_token_id
    result = d3llm.generate(ours, prompts)  # the folder's defaults: greedy autoregressive, 48 new tokens
    assert result.method == "autoregressive"
    for i, p in enumerate(prompts):
        out = theirs.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False, eos_token_id=eos,
                              pad_token_id=eos)
        generated = out[0, len(p):].tolist()
        expected = generated[: generated.index(eos)] if eos in generated else generated
        assert result.tokens[i] == expected, i
        assert result.nfe[i] == len(expected) + (eos in generated)
    assert score(result.texts(tokenizer), [test[i].gold for i in range(8)]).strict >= 87.5
