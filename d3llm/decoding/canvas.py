"""The decoding canvas of a batch: left-padded prompts followed by ``max_new_tokens`` mask tokens.

Left padding aligns every row's generation region at the same canvas columns ``[G, G + N)`` (G = longest prompt),
so block boundaries are shared by all rows and per-row state reduces to per-row counters. Padding columns are
excluded from attention and rotary positions follow the padding mask, so each row computes what it would alone.

The token ids live on the host (a numpy array): the decoding state machine reads and edits them there, and each
forward copies the slice it needs to the device (a few kilobytes; on the CPU no copy at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from d3llm.errors import GenerationError


@dataclass
class Canvas:
    """Tokens and geometry of the rows still being decoded.

    Attributes:
        x: ``[n, L]`` int64 token ids on the host, ``L = G + N``.
        attention_mask: ``[n, L]`` device tensor (1 = real token) or None when no row is padded.
        device: where the model runs.
        rows: ``[n]`` indices of these rows in the caller's batch.
        prompt_lengths: ``[n]`` real prompt lengths (numpy).
        gen_start: G, the first generated column.
        mask_id: the mask token id.
    """

    x: np.ndarray
    attention_mask: torch.Tensor | None
    rows: np.ndarray
    prompt_lengths: np.ndarray
    gen_start: int
    mask_id: int
    device: torch.device

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    @property
    def gen_length(self) -> int:
        return self.length - self.gen_start

    def tokens(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Columns ``[start, end)`` as a device tensor (on the CPU, a view of the host array)."""
        return torch.from_numpy(self.x[:, start:end]).to(self.device)

    def select(self, keep: np.ndarray) -> "Canvas":
        """The canvas of a subset of rows (``keep``: indices into the current rows)."""
        mask = None
        if self.attention_mask is not None:
            mask = self.attention_mask.index_select(0, torch.as_tensor(keep, dtype=torch.long, device=self.device))
        return Canvas(x=self.x[keep], attention_mask=mask, rows=self.rows[keep],
                      prompt_lengths=self.prompt_lengths[keep], gen_start=self.gen_start, mask_id=self.mask_id,
                      device=self.device)


def normalize_prompts(input_ids, attention_mask=None) -> list[list[int]]:
    """Accept a LongTensor ``[B, P]`` (optionally padded, with its mask), a 1-D tensor, a list of ids, a list of id
    lists, or what a tokenizer returns (a ``BatchEncoding`` / mapping with ``input_ids`` and optionally
    ``attention_mask``), and return one list of ids per row. Empty prompts are an error naming the row."""
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise GenerationError(f"input_ids is a mapping without an 'input_ids' entry (keys: {sorted(input_ids)}); "
                                  f"pass the tokenizer's output or the ids themselves")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        attention_mask = torch.as_tensor(attention_mask)
        if not isinstance(input_ids, torch.Tensor):
            try:
                input_ids = torch.as_tensor(input_ids, dtype=torch.long)
            except (ValueError, TypeError):
                raise GenerationError("input_ids with an attention_mask must be a rectangular batch of token ids "
                                      "(as a tokenizer pads them)") from None
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
            raise GenerationError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.ndim != 2:
            raise GenerationError(f"input_ids must be [batch, prompt_length], got shape {tuple(input_ids.shape)}")
        ids = input_ids.detach().cpu()
        if attention_mask is None:
            rows = ids.tolist()
        else:
            if attention_mask.ndim == 1 and input_ids.ndim == 2:
                attention_mask = attention_mask.unsqueeze(0)
            if attention_mask.shape != input_ids.shape:
                raise GenerationError(
                    f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            keep = attention_mask.detach().cpu().bool()
            rows = [r[k].tolist() for r, k in zip(ids, keep)]
    elif isinstance(input_ids, (list, tuple)):
        if input_ids and all(isinstance(t, (int, np.integer)) for t in input_ids):
            rows = [list(input_ids)]
        else:
            rows = []
            for i, r in enumerate(input_ids):
                if isinstance(r, torch.Tensor):
                    r = r.tolist()
                if not isinstance(r, (list, tuple)) or not all(isinstance(t, (int, np.integer)) for t in r):
                    raise GenerationError(f"prompt {i} must be a list of integer token ids, got {type(r).__name__}")
                rows.append([int(t) for t in r])
    else:
        raise GenerationError(
            f"input_ids must be a LongTensor [batch, length] or a list of token-id lists, got {type(input_ids).__name__}"
        )
    if not rows:
        raise GenerationError("input_ids holds no prompt")
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise GenerationError(f"prompt {i} is empty; every row needs at least one token")
    return rows


def build_canvas(prompts: list[list[int]], max_new_tokens: int, *, mask_id: int, pad_id: int, vocab_size: int,
                 device: torch.device) -> Canvas:
    """Left-pad the prompts with ``pad_id`` and append ``max_new_tokens`` masks."""
    for i, r in enumerate(prompts):
        ids = np.asarray(r, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        if bad.size:
            raise GenerationError(f"prompt {i} holds token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    lengths = np.array([len(r) for r in prompts], dtype=np.int64)
    g = int(lengths.max())
    x = np.full((len(prompts), g + max_new_tokens), mask_id, dtype=np.int64)
    padded = bool((lengths != g).any())
    mask = np.ones_like(x) if padded else None
    for i, r in enumerate(prompts):
        x[i, g - len(r) : g] = r
        if padded:
            x[i, : g - len(r)] = pad_id
            mask[i, : g - len(r)] = 0
    return Canvas(x=x, attention_mask=None if mask is None else torch.from_numpy(mask).to(device),
                  rows=np.arange(len(prompts)), prompt_lengths=lengths, gen_start=g, mask_id=mask_id,
                  device=torch.device(device))
