"""Offline tokenizer loading with chat templates, for the LLaDA (tokenizer.json) and Dream (vocab/merges) layouts."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

import d3llm
from d3llm import CheckpointError

LLADA_TEMPLATE = (
    "{{ '<|startoftext|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = ["Tom has 3 apples and buys 4 more.", "How many apples does Tom have now?", "3 + 4 = 7", "#### 7"] * 20


def _bpe(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture
def llada_tok_dir(tmp_path):
    specials = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|mdm_mask|>"]
    _bpe(specials).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "chat_template": LLADA_TEMPLATE, "add_bos_token": False,
        "model_max_length": 4096,
    }))
    return tmp_path


def test_llada_layout_tokenizer(llada_tok_dir):
    tok = d3llm.load_tokenizer(llada_tok_dir)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 1
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") == 5
    text = "Tom has 3 apples."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "  How many?  "}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHow many?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids[0] == 0 and ids.count(2) == 1  # special tokens are single ids


def test_chat_template_from_jinja_file(llada_tok_dir):
    config = json.loads((llada_tok_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (llada_tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (llada_tok_dir / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    tok = d3llm.load_tokenizer(llada_tok_dir)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n")


@pytest.fixture
def dream_tok_dir(tmp_path):
    """Dream's layout: a slow remote-code tokenizer class over Qwen2 vocab.json/merges.txt."""
    tok = _bpe([])
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt
    vocab_size = len(json.loads((tmp_path / "vocab.json").read_text()))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    added = {str(vocab_size + i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                   "normalized": False, "single_word": False} for i, s in enumerate(specials)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": added, "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "chat_template": CHATML_TEMPLATE, "errors": "replace",
    }))
    marker = tmp_path / "remote_code_ran"
    (tmp_path / "tokenization_dream.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return tmp_path, vocab_size


def test_dream_layout_tokenizer_without_remote_code(dream_tok_dir):
    folder, vocab_size = dream_tok_dir
    tok = d3llm.load_tokenizer(folder)
    assert not (folder / "remote_code_ran").exists()
    assert tok.eos_token_id == vocab_size and tok.mask_token_id == vocab_size + 3
    assert tok.convert_tokens_to_ids("<|im_end|>") == vocab_size + 2
    text = "How many apples does Tom have now?"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert ids == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_errors(tmp_path, llada_tok_dir):
    with pytest.raises(CheckpointError, match=r"tokenizer folder '.*missing' does not exist"):
        d3llm.load_tokenizer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"holds no tokenizer: expected tokenizer.json, or vocab.json with "
                                              r"merges.txt"):
        d3llm.load_tokenizer(empty)
    (llada_tok_dir / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"cannot load the tokenizer in"):
        d3llm.load_tokenizer(llada_tok_dir)
    (llada_tok_dir / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json is not valid JSON"):
        d3llm.load_tokenizer(llada_tok_dir)
