"""The word-level tokenizer of the built-in task, saved in the LLaDA layout (``tokenizer.json`` +
``tokenizer_config.json`` with a chat template), loadable by :func:`d3llm.load_tokenizer` and by transformers'
``AutoTokenizer`` offline.

Text is split into a newline, the ``####`` marker, words, single digits and punctuation marks, each keeping its
leading space (``" has"``, ``" 1"``, ``"2"``), so that decoding is plain concatenation and round-trips exactly;
numbers are always spelt digit by digit. The vocabulary is closed: every word the task generator can emit, with a
leading space, plus the no-space form of capitalised words (line starts), digits and ASCII punctuation. Anything
else maps to ``<|unk|>``.

Special tokens mirror LLaDA-8B-Instruct's (SPEC 2.4): ``<|startoftext|>`` (BOS, inserted by the chat template),
``<|endoftext|>`` (EOS and padding: the decoders' end of text), ``<|eot_id|>`` (end of turn),
``<|start_header_id|>``/``<|end_header_id|>`` and the mask token ``<|mdm_mask|>``. Single-turn prompt::

    <|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n

An assistant answer is ``{answer}<|eot_id|>`` followed by ``<|endoftext|>`` padding.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

from d3llm.tasks.arith import TOKEN_PATTERN, task_words

BOS, EOS, EOT, START_HEADER, END_HEADER, MASK, UNK = (
    "<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|mdm_mask|>",
    "<|unk|>",
)
SPECIAL_TOKENS = (EOS, BOS, EOT, START_HEADER, END_HEADER, MASK, UNK)

CHAT_TEMPLATE = (
    "{{ '<|startoftext|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def task_vocabulary() -> list[str]:
    """The ordered token list: special tokens first (ids 0-6), then ``\\n``, chat roles, ``####``, digits,
    punctuation, words."""
    tokens: list[str] = list(SPECIAL_TOKENS) + ["\n", "user", "assistant", "system", "####"]
    tokens += [d for d in string.digits] + [" " + d for d in string.digits]
    tokens += [c for c in string.punctuation] + [" " + c for c in string.punctuation]
    for word in task_words():
        tokens.append(" " + word)
        if word[:1].isupper():
            tokens.append(word)
    seen: set[str] = set()
    return [t for t in tokens if not (t in seen or seen.add(t))]


def build_tokenizer(folder: str | os.PathLike | None = None, *, model_max_length: int = 1024):
    """Build the task tokenizer; with ``folder``, also write ``tokenizer.json`` and ``tokenizer_config.json`` there.

    Returns the transformers tokenizer (as :func:`d3llm.load_tokenizer` would load it back).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(task_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": UNK, "mask_token": MASK,
        "additional_special_tokens": [EOT, START_HEADER, END_HEADER],
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length, "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }
    if folder is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return _write_and_load(backend, config, Path(tmp))
    return _write_and_load(backend, config, Path(folder))


def _write_and_load(backend, config: dict, folder: Path):
    from d3llm.files import atomic_write, atomic_write_text, make_folder
    from d3llm.models.tokenizer import load_tokenizer

    make_folder(folder)
    atomic_write(folder / "tokenizer.json", lambda p: backend.save(str(p)))
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return load_tokenizer(folder)
