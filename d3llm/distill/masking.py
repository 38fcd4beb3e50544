"""Noisy inputs of pseudo-trajectory distillation for one batch (SPEC 7.2).

Per sample, with block size B and mask ratio t (shared by the micro-batch) and response length R (LLaDA: up to and
including the first end-of-text; Dream: the whole padded response, padding counts):

* a block index ``k`` uniform in ``[0, R // B]`` (inclusive): the block ``[k*B, k*B + B)`` of the response, the last
  choice running to the end of the padded response (``whole_response`` takes the whole response as one block);
* trajectory masking: the teacher's state ``j = min(s + floor((1 - t) * seg), N - 1)`` (``s`` the block start,
  ``seg`` its length, N the number of states): a block position is hidden iff the teacher had not committed it by
  step j (``order > j``). That state has ``j + 1`` committed tokens: one more than the nominal ratio (the
  reference's off-by-one, kept), and they are the ones the teacher decoded first;
* naive random masking (the ablation): hidden iff ``u < (1 - 1e-3) * t + 1e-3``;
* the prompt and the response before the block stay clean; everything after the block is masked in both inputs;
* the complementary input hides exactly the block positions the first one reveals.

Shapes: b samples, L = G + R_len columns (left-padded prompts of width G, then the response columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RANDOM_MASK_EPS = 1e-3


@dataclass
class NoisyBatch:
    """``noisy``/``complement`` ``[b, L]`` inputs; ``hidden``/``hidden_complement`` ``[b, L]`` loss masks;
    ``block_start``/``block_end`` ``[b]`` the chosen block in response coordinates."""

    noisy: torch.Tensor
    complement: torch.Tensor
    hidden: torch.Tensor
    hidden_complement: torch.Tensor
    block_start: torch.Tensor
    block_end: torch.Tensor


def response_lengths(response: torch.Tensor, eos_id: int, padding_counts: bool) -> torch.Tensor:
    """``[b]`` R per sample: the full width when padding counts (Dream), else up to and including the first
    ``eos_id`` (LLaDA's ``full_len - prompt_len``; the full width when there is none)."""
    b, width = response.shape
    if padding_counts:
        return torch.full((b,), width, dtype=torch.long)
    is_eos = response == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((b,), width - 1))
    return first.long() + 1


def noisy_inputs(targets: torch.Tensor, response_start: int, order: torch.Tensor, lengths: torch.Tensor,
                 block_size: int, t: torch.Tensor, block_u: torch.Tensor, mask_u: torch.Tensor, mask_id: int,
                 n_states: int, random_mask: bool = False, whole_response: bool = False) -> NoisyBatch:
    """Build both noisy inputs and their loss masks (see the module docstring).

    Args:
        targets: ``[b, L]`` clean ids; the response is columns ``[response_start, L)``.
        order: ``[b, R_len]`` the teacher's commit step per response position (padding: ``n_states`` = never,
            or -1 = revealed from the start).
        lengths: ``[b]`` response lengths R (:func:`response_lengths`).
        t: ``[b]`` mask ratio of each sample (float64); block_u: ``[b]`` uniforms for the block index;
        mask_u: ``[b, R_len]`` uniforms for random masking.
        n_states: N, the number of teacher states (the trajectory's generation length).
    """
    width = targets.shape[1] - response_start
    pos = torch.arange(width)[None, :]
    blocks = lengths // block_size
    k = torch.minimum((block_u.double() * (blocks + 1).double()).floor().long(), blocks)
    start = k * block_size
    end = torch.where(k < blocks, start + block_size, torch.full_like(start, width))
    if whole_response:
        start, end = torch.zeros_like(start), torch.full_like(start, width)
    in_block = (pos >= start[:, None]) & (pos < end[:, None])
    if random_mask:
        hide = mask_u < ((1 - RANDOM_MASK_EPS) * t.double() + RANDOM_MASK_EPS)[:, None]
    else:
        state = torch.clamp(start + ((1 - t.double()) * (end - start).double()).floor().long(), max=n_states - 1)
        hide = order > state[:, None]
    hide = hide & in_block
    show = in_block & ~hide
    after = pos >= end[:, None]

    def full(region: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(targets.shape, dtype=torch.bool)
        out[:, response_start:] = region
        return out

    hidden, hidden_rev, tail = full(hide), full(show), full(after)
    noisy = targets.masked_fill(hidden | tail, mask_id)
    complement = targets.masked_fill(hidden_rev | tail, mask_id)
    return NoisyBatch(noisy, complement, hidden, hidden_rev, start, end)
