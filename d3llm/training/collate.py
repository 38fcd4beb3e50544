"""Turning (question, answer) examples into masked-diffusion training batches.

A row is ``prompt ++ response``. The prompt is the chat-templated conversation (the tokenizer's own template, with
the generation prompt; earlier turns, when the example has them, come first; a tokenizer without a template gets
the raw question). The response is the answer's tokens, the end-of-turn token when the tokenizer has one
(``<|eot_id|>``), then end-of-text padding up to the row's *canvas* length, the number of new tokens a decoder
fills (LLaDA guidelines: answers padded with EOS, and the padding counts as response). The canvas may differ
between rows (training draws it from a mix, so a model decodes correctly on any canvas): a batch is as wide as its
longest canvas, and the columns past a shorter row's canvas are dead (``attention_mask`` 0, ``response_mask``
False, never attended to, never scored). Prompts are left-padded the same way (rotary positions counted from the
first real token), so every row sees exactly the canvas a batch-1 decoder would build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from d3llm.errors import ConfigError
from d3llm.models.prompts import encode_conversation, end_of_turn_id


@dataclass
class Encoded:
    """Token ids of one example: ``prompt`` and ``response`` (the canvas: EOS-padded answer)."""

    prompt: list[int]
    response: list[int]
    answer_tokens: int   # tokens of the answer itself (before end of turn and padding)


@dataclass
class Batch:
    """``input_ids``/``attention_mask`` ``[B, L]``; the response is columns ``[L - response_length, L)``, of which
    row b's canvas is the first ``canvas_lengths[b]`` (``response_mask`` ``[B, response_length]``; None: every row
    fills the whole width)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_length: int
    response_mask: torch.Tensor | None = None

    @property
    def response_start(self) -> int:
        return self.input_ids.shape[1] - self.response_length

    @property
    def canvas_lengths(self) -> torch.Tensor:
        """``[B]`` the canvas length of every row."""
        if self.response_mask is None:
            return torch.full((self.input_ids.shape[0],), self.response_length, device=self.input_ids.device)
        return self.response_mask.sum(dim=1)

    def to(self, device) -> "Batch":
        mask = self.response_mask.to(device) if self.response_mask is not None else None
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_length, mask)

    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


class Encoder:
    """Tokenises examples for a tokenizer; ``response_length`` is the canvas of an example encoded without one of its
    own (see the module docstring)."""

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

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens and the end-of-turn token (what must fit in a canvas)."""
        ids = self.tokenizer.encode(answer.strip(), add_special_tokens=False)
        return ids + ([self.eot_id] if self.eot_id is not None else [])

    def encode(self, question: str, answer: str, source: str = "", history: tuple = (),
               canvas: int | Callable[[int], int] | None = None) -> Encoded:
        """One example; ``history``: earlier (question, answer) turns; ``canvas``: its response length (default
        ``response_length``), or a function of the answer's length (with the end-of-turn token) that chooses it."""
        prompt = encode_conversation(self.tokenizer, question, history)
        body = self.answer_ids(answer)
        length = canvas(len(body)) if callable(canvas) else canvas if canvas is not None else self.response_length
        if len(body) > length:
            raise ConfigError(
                f"{source or 'an example'}: the answer takes {len(body)} tokens (with the end-of-turn token), more "
                f"than the response length {length}; raise --response-length or shorten the answers"
            )
        if self.max_prompt_length is not None and len(prompt) > self.max_prompt_length:
            raise ConfigError(
                f"{source or 'an example'}: the prompt takes {len(prompt)} tokens, more than the maximum "
                f"{self.max_prompt_length}"
            )
        n_answer = len(body) - (1 if self.eot_id is not None else 0)
        return Encoded(prompt, body + [self.eos_id] * (length - len(body)), n_answer)

    def encode_example(self, example, canvas: int | Callable[[int], int] | None = None) -> Encoded:
        return self.encode(example.question, example.answer, getattr(example, "source", ""),
                           getattr(example, "history", ()), canvas)

    def collate(self, items: list[Encoded]) -> Batch:
        """Left-pad prompts (pad id = EOS, attention mask 0), append the responses, and right-pad shorter canvases
        with dead columns (attention mask 0, ``response_mask`` False)."""
        width = max(len(e.prompt) for e in items)
        span = max(len(e.response) for e in items)
        ids = torch.full((len(items), width + span), self.eos_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        response_mask = torch.zeros(len(items), span, dtype=torch.bool)
        for row, e in enumerate(items):
            start, end = width - len(e.prompt), width + len(e.response)
            ids[row, start:width] = torch.tensor(e.prompt, dtype=torch.long)
            ids[row, width:end] = torch.tensor(e.response, dtype=torch.long)
            mask[row, start:end] = 1
            response_mask[row, :len(e.response)] = True
        uniform = bool(response_mask.all())
        return Batch(ids, mask, span, None if uniform else response_mask)
