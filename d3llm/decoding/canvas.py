"""The decoding canvas of the active rows: each row's prompt followed by its ``max_new_tokens`` mask tokens.

Every row keeps its own coordinates: column ``j`` of row ``i`` is position ``j`` of that row's sequence (its
rotary position and its KV-cache slot), the prompt fills ``[0, P_i)`` and the generation ``[P_i, P_i + N_i)``.
Prompts and generation lengths differ per row; nothing is padded on the left, and columns after a row's end hold a
filler token that is never a mask (so counts of masks ignore them). Rows join (``concat``) and leave (``select``)
without moving any other row's columns.

The token ids live on the host (a numpy array): the decoding state machine reads and edits them there, and each
forward gathers the slices it needs (a few kilobytes) for the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from d3llm.decoding.rows import RowTable, pad_columns
from d3llm.errors import GenerationError


@dataclass
class Canvas(RowTable):
    """Tokens and geometry of the rows being decoded.

    Attributes:
        x: ``[n, W]`` int64 token ids on the host; ``W >= max(P) + max(N)``.
        prompt_lengths: ``[n]`` P_i, which is also the first generated position of each row.
        gen_lengths: ``[n]`` N_i, the generation length of each row.
        mask_id: the mask token id; filler: the id after a row's end (never the mask).
        device: where the model runs.
    """

    row_fields = {"x": None, "prompt_lengths": 0, "gen_lengths": 0}

    x: np.ndarray
    prompt_lengths: np.ndarray
    gen_lengths: np.ndarray
    mask_id: int
    filler: int
    device: torch.device

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def width(self) -> int:
        return self.x.shape[1]

    @property
    def gen_start(self) -> np.ndarray:
        """``[n]`` the first generated position of every row (its prompt length)."""
        return self.prompt_lengths

    @property
    def lengths(self) -> np.ndarray:
        """``[n]`` prompt plus generation length of every row."""
        return self.prompt_lengths + self.gen_lengths

    @property
    def max_gen_length(self) -> int:
        return int(self.gen_lengths[0]) if self.gen_lengths.size == 1 else int(self.gen_lengths.max())

    def gen(self) -> np.ndarray:
        """``[n, max N]`` every row's generation region (filler after its end). A view when every prompt has the same
        length, else a copy: read it, edit ``x``."""
        g = self.prompt_lengths
        n_max = self.max_gen_length
        if g.size == 1 or (g == g[0]).all():
            return self.x[:, g[0] : g[0] + n_max]
        return np.take_along_axis(self.x, g[:, None] + np.arange(n_max), axis=1)

    def prompt_masks(self) -> np.ndarray:
        """``[n, max P]`` where a prompt position holds the mask token (False after a row's prompt)."""
        p_max = int(self.prompt_lengths.max())
        return (self.x[:, :p_max] == self.mask_id) & (np.arange(p_max) < self.prompt_lengths[:, None])

    def first_candidates(self) -> np.ndarray:
        """``[n]`` the first position a decoder may fill: 0 when the row's prompt holds masks (the reference fills
        them too), else the start of its generation region."""
        return np.where(self.prompt_masks().any(axis=1), 0, self.gen_start)

    def concat(self, other: "Canvas") -> "Canvas":
        """These rows, then ``other``'s; the token array is widened (with the filler) to the wider of the two."""
        p = np.concatenate([self.prompt_lengths, other.prompt_lengths])
        n = np.concatenate([self.gen_lengths, other.gen_lengths])
        width = max(self.width, other.width, int(p.max() + n.max()))
        x = np.concatenate([pad_columns(self.x, width, self.filler), pad_columns(other.x, width, self.filler)])
        return Canvas(x=x, prompt_lengths=p, gen_lengths=n, mask_id=self.mask_id, filler=self.filler,
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


def build_canvas(prompts: list[np.ndarray], gen_lengths: list[int], *, mask_id: int, filler: int,
                 device: torch.device) -> Canvas:
    """The canvas of new rows: each prompt (validated ids, see :func:`check_prompt`) followed by its masks."""
    p = np.array([len(r) for r in prompts], dtype=np.int64)
    n = np.array(gen_lengths, dtype=np.int64)
    x = np.full((len(prompts), int(p.max() + n.max())), filler, dtype=np.int64)
    for i, r in enumerate(prompts):
        x[i, : p[i]] = r
        x[i, p[i] : p[i] + n[i]] = mask_id
    return Canvas(x=x, prompt_lengths=p, gen_lengths=n, mask_id=mask_id, filler=filler, device=torch.device(device))


def check_prompt(prompt, label, vocab_size: int) -> np.ndarray:
    """One prompt as an int64 array, or a :class:`GenerationError` naming it (``prompt {label} ...``)."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dtype.is_floating_point or prompt.dtype == torch.bool or prompt.ndim != 1:
            raise GenerationError(f"prompt {label} must be a 1-D tensor of integer token ids, got "
                                  f"{prompt.dtype} of shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple, np.ndarray)) or not all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt):
        raise GenerationError(f"prompt {label} must be a list of integer token ids, got {type(prompt).__name__}")
    if len(prompt) == 0:
        raise GenerationError(f"prompt {label} is empty; every row needs at least one token")
    ids = np.asarray(prompt, dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise GenerationError(f"prompt {label} holds token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return ids
