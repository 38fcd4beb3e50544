"""Training losses on response tokens: the masked-diffusion SFT objective of the LLaDA guidelines, and the next-token
loss of a causal model (the autoregressive baseline, :func:`causal_lm_loss`).

For each sequence a ratio ``t ~ U(0, 1)`` is drawn and ``p = (1 - eps) * t + eps``; every response token is
replaced by the mask token independently with probability ``p`` (the prompt never is, nor a dead column past a
shorter row's canvas); the loss is the sum over masked tokens of ``CE / p`` divided by the canvas length of that
sequence (EOS padding included), averaged over the batch. This is an upper bound on the negative log-likelihood of the response (the masked-diffusion ELBO).

The randomness is drawn for the response columns only (``t`` ``[B]`` and uniforms ``u`` ``[B, R]``), so a global
batch can draw it once and hand each data-parallel rank its rows: one process and many see the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from d3llm.training.collate import Batch


@dataclass
class LossOutput:
    """``loss`` (scalar, differentiable); ``masked``: the tokens the loss scores (masked ones, or a causal model's
    targets) and their unweighted ``ce`` sum (for logging)."""

    loss: torch.Tensor
    masked: int
    ce_sum: float


def draw_noise(n: int, response_length: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ratios ``t`` ``[n]`` ~ U(0, 1) and per-token uniforms ``u`` ``[n, response_length]`` (CPU, float32)."""
    t = torch.rand(n, generator=generator)
    u = torch.rand(n, response_length, generator=generator)
    return t, u


def add_noise(batch: Batch, mask_id: int, t: torch.Tensor, u: torch.Tensor, eps: float = 1e-3
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask response tokens where ``u < p``, ``p = (1 - eps) * t + eps``.

    Args:
        batch: ``input_ids`` ``[B, L]`` whose last ``R = response_length`` columns are the response.
        t: ``[B]`` ratios; u: ``[B, R]`` uniforms.
    Returns:
        ``noisy`` ids ``[B, L]``, the boolean ``masked`` map ``[B, L]`` and ``p`` ``[B]``.
    """
    ids = batch.input_ids
    bsz, length = ids.shape
    r = batch.response_length
    if t.shape != (bsz,) or u.shape != (bsz, r):
        raise ValueError(f"noise shapes t {tuple(t.shape)}, u {tuple(u.shape)} do not match the batch [{bsz}, R={r}]")
    p = ((1 - eps) * t + eps).to(ids.device)
    masked = torch.zeros(bsz, length, dtype=torch.bool, device=ids.device)
    hit = u.to(ids.device) < p[:, None]
    masked[:, length - r:] = hit if batch.response_mask is None else hit & batch.response_mask
    noisy = ids.masked_fill(masked, mask_id)
    return noisy, masked, p


def masked_diffusion_loss(model, batch: Batch, mask_id: int, t: torch.Tensor, u: torch.Tensor,
                          eps: float = 1e-3) -> LossOutput:
    """LLaDA SFT loss on one batch (see the module docstring). ``model(ids, attention_mask=...)`` must return
    ``.logits`` ``[B, L, V]`` where position i scores token i."""
    noisy, masked, p = add_noise(batch, mask_id, t, u, eps)
    logits = model(noisy, attention_mask=batch.attention_mask).logits
    rows, cols = masked.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return LossOutput(loss=logits.sum() * 0.0, masked=0, ce_sum=0.0)
    ce = F.cross_entropy(logits[rows, cols].float(), batch.input_ids[rows, cols], reduction="none")
    per_row = torch.zeros(batch.input_ids.shape[0], device=ce.device).index_add(0, rows, ce / p[rows])
    loss = (per_row / batch.canvas_lengths.to(ce.device)).mean()
    return LossOutput(loss=loss, masked=int(rows.numel()), ce_sum=float(ce.detach().sum()))


def causal_lm_loss(model, batch: Batch, eos_id: int | None) -> LossOutput:
    """Next-token loss of a causal model on the response (teacher forcing, no noise).

    ``model`` returns aligned logits (position i scores token i from the causal context before it; the shift is
    inside the model). Counted targets are the response tokens up to and including the first ``eos_id`` (the answer,
    the end-of-turn token and one end-of-text: what a decoder that stops at EOS must produce; the padding after it
    is never generated and not trained). Per sequence the mean cross-entropy of its counted tokens; the loss is the
    mean over the batch (so data-parallel ranks with equal slices average to the global value).
    """
    logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits
    start = batch.response_start
    target = batch.input_ids[:, start:]
    counted = torch.ones_like(target, dtype=torch.bool)
    if eos_id is not None:
        is_eos = target == eos_id
        # positions after the first EOS: an EOS strictly before them in the response
        counted = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    if batch.response_mask is not None:
        counted = counted & batch.response_mask
    ce = F.cross_entropy(logits[:, start:].float().transpose(1, 2), target, reduction="none")  # [B, R]
    per_sequence = (ce * counted).sum(dim=1) / counted.sum(dim=1)
    return LossOutput(loss=per_sequence.mean(), masked=int(counted.sum()), ce_sum=float(ce.detach()[counted].sum()))
