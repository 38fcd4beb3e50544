"""Building blocks shared by both model families: RMSNorm, rotary embeddings and cache-aware attention.

Shapes: B batch, T forwarded positions, S attended key positions, H heads, D head dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from d3llm.cache.kv_cache import KVCache
from d3llm.models.packed import PackedPlan, packed_attention


class RMSNorm(nn.Module):
    """``weight * cast_back(x32 * rsqrt(mean(x32^2) + eps))``: normalised in fp32, cast back to the input dtype,
    **then** scaled by the weight (multiplying in fp32 before the cast gives different bf16 results)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half (NeoX) RoPE tables for ``positions`` ``[B, T]``: ``cos, sin`` of shape ``[B, 1, T, D]`` in fp32.

    ``inv_freq_j = theta^(-2j/D)``; the angle of position p is ``concat(p * inv_freq, p * inv_freq)``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin``; in fp32 and cast back when ``full_precision`` (LLaDA), else in x's dtype
    (Dream, as in Qwen2)."""
    if full_precision:
        x32 = x.float()
        return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


@dataclass
class AttentionPlan:
    """Everything the attention layers of one forward share (built once per forward by the model).

    Attributes:
        positions: ``[B, T]`` rotary positions of the forwarded tokens (0 = the first real token of a row).
        cos, sin: RoPE tables ``[B, 1, T, D]`` for the forwarded positions.
        attn_mask: ``[B, 1, T, S]`` bool (True = may attend) or None for full attention.
        cache: the KV cache to write the slice into and read keys from, or None.
        start: absolute canvas index of the first forwarded position (its cache slot).
        kv_end: with a cache, attention reads cached slots ``[0, kv_end)``.
        write_mask: ``[B, T]`` bool or None; False keeps the cached key/value at that slot (see ``write_range``).
    """

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    attn_mask: torch.Tensor | None
    cache: KVCache | None
    start: int
    kv_end: int
    write_mask: torch.Tensor | None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    layer_idx: int,
    num_heads: int,
    num_kv_heads: int,
    rope_full_precision: bool,
) -> torch.Tensor:
    """Multi-head attention without a causal mask (unless the plan carries one).

    Args:
        q: ``[B, T, H * D]`` projected queries; k, v: ``[B, T, H_kv * D]`` projected keys and values.
        plan: an :class:`AttentionPlan` (a padded batch) or a :class:`~d3llm.models.packed.PackedPlan` (rows'
            slices packed into one sequence, ``B = 1``).
    Returns:
        ``[B, T, H * D]`` attention output before the output projection.
    """
    if isinstance(plan, PackedPlan):
        return packed_attention(q, k, v, plan, layer_idx, num_heads, num_kv_heads,
                                lambda x, cos, sin: apply_rotary(x, cos, sin, rope_full_precision))
    bsz, seq, _ = q.shape
    head_dim = q.shape[-1] // num_heads
    q = q.view(bsz, seq, num_heads, head_dim).transpose(1, 2)
    k = k.view(bsz, seq, num_kv_heads, head_dim).transpose(1, 2)
    v = v.view(bsz, seq, num_kv_heads, head_dim).transpose(1, 2)
    q = apply_rotary(q, plan.cos, plan.sin, rope_full_precision)
    k = apply_rotary(k, plan.cos, plan.sin, rope_full_precision)  # keys are cached after RoPE
    if plan.cache is not None:
        k, v = plan.cache.write(layer_idx, k, v, plan.start, plan.kv_end, plan.write_mask)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=plan.attn_mask, enable_gqa=num_heads != num_kv_heads
    )
    return out.transpose(1, 2).reshape(bsz, seq, num_heads * head_dim)
