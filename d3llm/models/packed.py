"""Packed (ragged) forwards: the slices of several rows in one token axis, each attending to its own keys.

The decoding engine's rows need different slices: one row forwards a whole prompt and canvas, another one block
against its cached prefix, a third everything after its cache. A packed forward runs them as one sequence of
``T = sum(T_i)`` tokens:

* embeddings, norms, projections and the MLP run over the ``[1, T, d]`` packed tokens (one matmul per weight for
  the whole batch: this is where batching pays);
* attention runs per row: row i's queries (its slice ``[s_i, s_i + T_i)``) attend to keys ``[0, k_i)`` of its own
  cache row (its cached prefix, the slice's fresh keys, and for Fast-dLLM's dual cache the stale keys after the
  slice), or without a cache to its own slice. No row computes a position it does not need and nothing is padded.
  Neighbouring rows of the same shape (slice length, keys, start; consecutive cache rows) share one attention call
  on views of the packed tensors (no copy), which matters when rows move in lockstep;
* the LM head runs only at the positions the decoder scores.

Exactness: a row's result does not depend on the rows packed with it. Every kernel computes a token's row
independently of the other rows of the same call (elementwise ops, row-wise norms and softmax, per-row attention
calls) except one corner of CPU GEMM: MKL's kernels for matrices of few rows round differently from the kernels used
for taller ones. Measured with this project's torch build: on AVX2 machines results are bit-identical across M >= 4
and differ for M < 4; on AVX-512 machines rows differ up to M = 15 at inner widths 192-1024 (and 5 at 128). A packed
forward therefore pads its token axis, and the head its gathered positions, to at least
:data:`MIN_ROWS` entries, so a row forwarded alone meets the same kernels as in a batch. (GPU GEMMs may choose
kernels by shape too; the engine's exactness tests run on the CPU.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d3llm.cache.kv_cache import KVCache

MIN_ROWS = 16  # smallest matmul height whose per-row results match every larger one (CPU GEMM; see above)


@dataclass
class PackedRows:
    """Host description of a packed forward (numpy arrays over the n rows, ``T`` packed tokens).

    Attributes:
        starts: ``[n]`` first position of each row's slice; lengths: ``[n]`` its tokens T_i.
        offsets: ``[n]`` where each row's tokens begin in the packed axis.
        positions: ``[T]`` every packed token's position in its row (rotary position and cache slot).
        kv_lens: ``[n]`` keys each row attends to (``[0, kv_len)`` of its cache row; without a cache, its slice).
        slots: ``[n]`` each row's cache row (unused without a cache).
    """

    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    kv_lens: np.ndarray
    slots: np.ndarray

    @classmethod
    def from_slices(cls, starts: np.ndarray, ends: np.ndarray, kv_lens: np.ndarray | None = None,
                    slots: np.ndarray | None = None) -> "PackedRows":
        """Rows forwarding positions ``[starts, ends)``; ``kv_lens`` defaults to the slices (no cache)."""
        lengths = ends - starts
        offsets = np.cumsum(lengths) - lengths
        positions = np.arange(int(lengths.sum())) - np.repeat(offsets - starts, lengths)
        return cls(starts=starts, lengths=lengths, offsets=offsets, positions=positions,
                   kv_lens=lengths if kv_lens is None else kv_lens,
                   slots=np.arange(len(starts)) if slots is None else slots)

    @property
    def size(self) -> int:
        return int(self.lengths.sum())


@dataclass
class PackedPlan:
    """What the attention layers of one packed forward share (built once per forward by the model).

    Attributes:
        cos, sin: RoPE tables ``[1, 1, T', D]`` of the packed tokens (``T' >= T``: padded to :data:`MIN_ROWS`).
        groups: ``(offset, rows, length, kv_len, first slot, start)`` of consecutive rows with one shape, as
            Python ints (one attention call each).
        real: T, the packed tokens of the rows; tokens ``[T, T')`` are padding that attends to nothing.
        cache: the KV cache whose rows the slices are written to and read from, or None.
        write_slots, write_positions: ``[T]`` device tensors: the cache row and position of every real token.
        opens: ``[T']`` bool device tensor: the token is the first of its row's slice or has position 0 (Dream's
            shifted logits keep the token's own output there).
        causal: queries attend only to keys at or before their position.
        masks: with ``causal``, each group's ``[length, kv_len]`` boolean mask (built once per forward, shared by
            the layers); else None.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    groups: list[tuple[int, int, int, int, int, int]]
    real: int
    cache: KVCache | None
    write_slots: torch.Tensor | None
    write_positions: torch.Tensor | None
    opens: torch.Tensor
    causal: bool = False
    masks: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.causal and self.masks is None:
            self.masks = [torch.arange(kv_len, device=self.opens.device)[None, :]
                          <= torch.arange(start, start + n, device=self.opens.device)[:, None]
                          for _, _, n, kv_len, _, start in self.groups]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PackedPlan, layer_idx: int,
                     num_heads: int, num_kv_heads: int, rope) -> torch.Tensor:
    """Attention of a packed forward (module docstring).

    Args:
        q: ``[1, T', H * D]`` projected queries; k, v: ``[1, T', H_kv * D]``.
        rope: ``rope(x, cos, sin)`` applies the family's rotary embedding to ``[1, H, T', D]``.
    Returns:
        ``[1, T', H * D]`` (zeros at padding tokens).
    """
    _, seq, _ = q.shape
    head_dim = q.shape[-1] // num_heads
    q = rope(q.view(1, seq, num_heads, head_dim).transpose(1, 2), plan.cos, plan.sin)
    k = rope(k.view(1, seq, num_kv_heads, head_dim).transpose(1, 2), plan.cos, plan.sin)  # cached after RoPE
    v = v.view(1, seq, num_kv_heads, head_dim).transpose(1, 2)
    cache = plan.cache
    if cache is not None:
        kbuf, vbuf = cache.keys[layer_idx], cache.values[layer_idx]
        if plan.write_slots is None:  # one row
            _, _, n, _, slot, s = plan.groups[0]
            kbuf[slot, :, s : s + n] = k[0, :, :n]
            vbuf[slot, :, s : s + n] = v[0, :, :n]
        else:
            kbuf[plan.write_slots, :, plan.write_positions] = k[0, :, : plan.real].transpose(0, 1)
            vbuf[plan.write_slots, :, plan.write_positions] = v[0, :, : plan.real].transpose(0, 1)
    gqa = num_heads != num_kv_heads
    outs = []
    for j, (offset, count, n, kv_len, slot, start) in enumerate(plan.groups):
        end = offset + count * n
        if cache is not None:
            keys, values = kbuf[slot : slot + count, :, :kv_len], vbuf[slot : slot + count, :, :kv_len]
        else:
            keys, values = _rows_of(k[:, :, offset:end], count), _rows_of(v[:, :, offset:end], count)
        mask = plan.masks[j] if plan.causal else None
        out = F.scaled_dot_product_attention(_rows_of(q[:, :, offset:end], count), keys, values, attn_mask=mask,
                                             enable_gqa=gqa)
        outs.append(out if count == 1 else out.transpose(0, 1).reshape(1, num_heads, count * n, head_dim))
    if seq > plan.real:
        outs.append(q.new_zeros((1, num_heads, seq - plan.real, head_dim)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).reshape(1, seq, num_heads * head_dim)


def _rows_of(x: torch.Tensor, count: int) -> torch.Tensor:
    """``[1, H, count * n, D]`` (the packed tokens of ``count`` rows of n tokens) as ``[count, H, n, D]`` (a view)."""
    if count == 1:
        return x
    _, heads, tokens, dim = x.shape
    return x.view(heads, count, tokens // count, dim).transpose(0, 1)


def shape_groups(rows: PackedRows, cached: bool) -> list[tuple[int, int, int, int, int, int]]:
    """Consecutive rows with the same slice length, keys and start (and, with a cache, consecutive cache rows):
    ``(offset, rows, length, kv_len, first slot, start)`` per group."""
    n = len(rows.starts)
    offsets, lengths, kv, slots, starts = (a.tolist() for a in (rows.offsets, rows.lengths, rows.kv_lens,
                                                                rows.slots, rows.starts))
    groups = []
    i = 0
    while i < n:
        j = i + 1
        while (j < n and lengths[j] == lengths[i] and kv[j] == kv[i] and starts[j] == starts[i]
               and (not cached or slots[j] == slots[i] + (j - i))):
            j += 1
        groups.append((offsets[i], j - i, lengths[i], kv[i], slots[i], starts[i]))
        i = j
    return groups
