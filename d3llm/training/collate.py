"""Turning (question, answer) examples into masked-diffusion training batches.

A row is ``prompt ++ response``. The prompt is the chat-templated question (the tokenizer's own template, with the
generation prompt; a tokenizer without a template gets the raw question). The response is the answer's tokens, the
end-of-turn token when the tokenizer has one (``<|eot_id|>``), then end-of-text padding up to exactly
``response_length`` tokens, the canvas length the decoders fill (LLaDA guidelines: answers padded with EOS, and the
padding counts as response). Prompts of a batch are left-padded (``attention_mask`` 0, never attended to, rotary
positions counted from the first real token), so every row sees exactly the canvas a batch-1 decoder would build,
and the response occupies the same last ``response_length`` columns of every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d3llm.errors import ConfigError
from d3llm.models.prompts import encode_prompt, end_of_turn_id


@dataclass
class Encoded:
    """Token ids of one example: ``prompt`` and ``response`` (length ``response_length``, EOS-padded)."""

    prompt: list[int]
    response: list[int]
    answer_tokens: int   # tokens of the answer itself (before end of turn and padding)


@dataclass
class Batch:
    """``input_ids``/``attention_mask`` ``[B, L]``; the response is columns ``[L - response_length, L)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_length: int

    @property
    def response_start(self) -> int:
        return self.input_ids.shape[1] - self.response_length

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_length)

    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


class Encoder:
    """Tokenises examples for a tokenizer and a fixed ``response_length`` (see the module docstring)."""

    def __init__(self, tokenizer, response_length: int, max_prompt_length: int | None = None):
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token; masked-diffusion training pads answers with it")
        if response_length <= 0:
            raise ConfigError(f"response_length must be positive, got {response_length}")
        self.tokenizer = tokenizer
        self.response_length = response_length
        self.max_prompt_length = max_prompt_length
        self.eos_id = tokenizer.eos_token_id
        self.eot_id = end_of_turn_id(tokenizer)

    def encode(self, question: str, answer: str, source: str = "") -> Encoded:
        tok = self.tokenizer
        prompt = encode_prompt(tok, question)
        answer_ids = tok.encode(answer.strip(), add_special_tokens=False)
        body = answer_ids + ([self.eot_id] if self.eot_id is not None else [])
        if len(body) > self.response_length:
            raise ConfigError(
                f"{source or 'an example'}: the answer takes {len(body)} tokens (with the end-of-turn token), more "
                f"than the response length {self.response_length}; raise --response-length or shorten the answers"
            )
        if self.max_prompt_length is not None and len(prompt) > self.max_prompt_length:
            raise ConfigError(
                f"{source or 'an example'}: the prompt takes {len(prompt)} tokens, more than the maximum "
                f"{self.max_prompt_length}"
            )
        return Encoded(prompt, body + [self.eos_id] * (self.response_length - len(body)), len(answer_ids))

    def encode_example(self, example) -> Encoded:
        return self.encode(example.question, example.answer, getattr(example, "source", ""))

    def collate(self, items: list[Encoded]) -> Batch:
        """Left-pad prompts (pad id = EOS, attention mask 0) and append the responses."""
        width = max(len(e.prompt) for e in items)
        ids = torch.full((len(items), width + self.response_length), self.eos_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(items):
            start = width - len(e.prompt)
            ids[row, start:width] = torch.tensor(e.prompt, dtype=torch.long)
            ids[row, width:] = torch.tensor(e.response, dtype=torch.long)
            mask[row, start:] = 1
        return Batch(ids, mask, self.response_length)
