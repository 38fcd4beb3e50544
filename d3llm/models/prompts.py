"""Chat prompts: the question-to-prompt-ids step that training, evaluation, the demo, ``generate --chat`` and the
benchmarks share (so a model always sees at inference exactly the prompt it was trained on).

    ids = d3llm.encode_prompt(tokenizer, "Tom has 12 apples ...")   # chat template + generation prompt, no BOS added
"""

from __future__ import annotations

import warnings

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")


def prompt_text(tokenizer, question: str) -> str:
    """The prompt string of a question: the tokenizer's chat template with the generation prompt, if it has one,
    else the raw question."""
    if getattr(tokenizer, "chat_template", None):
        return messages_text(tokenizer, [{"role": "user", "content": question}])
    return question


def messages_text(tokenizer, messages: list[dict]) -> str:
    """A conversation (``[{"role", "content"}, ...]``) through the tokenizer's chat template, with the generation
    prompt: the text the model answers."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_messages(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation's prompt (:func:`messages_text`, encoded like :func:`encode_prompt`)."""
    return encode_text(tokenizer, messages_text(tokenizer, messages))


def conversation(question: str, history=()) -> list[dict]:
    """Chat messages of ``question`` after the earlier ``history`` turns (``(question, answer)`` pairs, oldest
    first)."""
    messages = []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}]


def encode_conversation(tokenizer, question: str, history=()) -> list[int]:
    """Prompt ids of ``question`` after ``history`` through the chat template (:func:`encode_prompt` when there is
    no history): what training, extraction and evaluation feed a model for a conversation."""
    if not history:
        return encode_prompt(tokenizer, question)
    return encode_messages(tokenizer, conversation(question, history))


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of a question's prompt (:func:`prompt_text`, no extra special tokens): what training sees before
    the response and what the decoders, the evaluation and the demo feed the model."""
    return encode_text(tokenizer, prompt_text(tokenizer, question))


def encode_text(tokenizer, text: str) -> list[int]:
    """``tokenizer.encode(text)`` without special tokens; words the vocabulary lacks (closed word-level vocabularies
    such as the built-in task's) are reported in a warning with their count instead of silently becoming the
    unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return tokenizer.encode(text, add_special_tokens=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if unk in ids:
        words = [text[a:b].strip() for i, (a, b) in zip(ids, enc["offset_mapping"]) if i == unk]
        shown = ", ".join(repr(w) for w in dict.fromkeys(words).keys() if w)[:200]
        warnings.warn(f"{len(words)} word(s) of the prompt are not in the tokenizer's vocabulary and became "
                      f"{tokenizer.unk_token}: {shown}", UnknownWordsWarning, stacklevel=3)
    return ids


class UnknownWordsWarning(UserWarning):
    """Prompt words outside a closed vocabulary (they are encoded as the unknown token)."""


def end_of_turn_id(tokenizer) -> int | None:
    """The id of ``<|eot_id|>`` / ``<|im_end|>`` when the tokenizer has one and it differs from EOS."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] != tokenizer.eos_token_id:
            return vocab[token]
    return None
