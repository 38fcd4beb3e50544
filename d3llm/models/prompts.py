"""Chat prompts: the question-to-prompt-ids step that training, evaluation, the demo, ``generate --chat`` and the
benchmarks share (so a model always sees at inference exactly the prompt it was trained on).

    ids = d3llm.encode_prompt(tokenizer, "Tom has 12 apples ...")   # chat template + generation prompt, no BOS added
"""

from __future__ import annotations

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")


def prompt_text(tokenizer, question: str) -> str:
    """The prompt string of a question: the tokenizer's chat template with the generation prompt, if it has one,
    else the raw question."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return question


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of a question's prompt (:func:`prompt_text`, no extra special tokens): what training sees before
    the response and what the decoders, the evaluation and the demo feed the model."""
    return tokenizer.encode(prompt_text(tokenizer, question), add_special_tokens=False)


def end_of_turn_id(tokenizer) -> int | None:
    """The id of ``<|eot_id|>`` / ``<|im_end|>`` when the tokenizer has one and it differs from EOS."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] != tokenizer.eos_token_id:
            return vocab[token]
    return None
