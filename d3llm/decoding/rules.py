"""Token scores, sampling and commit rules shared by the decoders (SPEC 4.0), as batched tensor operations.

Shapes: B rows, W positions of the decoding window, V vocabulary. A *candidate* mask ``[B, W]`` marks the masked
positions a step may commit; each rule returns the boolean ``[B, W]`` set of positions to commit.

Numerics follow the reference exactly, because commit decisions compare these values with thresholds:
entropy and confidence come from ``softmax(float64(logits))`` of the **untempered** logits, and entropy is
``-sum(p * ln(p + 1e-12))`` in nats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INF = float("inf")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``[B, W]`` (float64, nats) of logits ``[B, W, V]``."""
    p = F.softmax(logits.to(torch.float64), dim=-1)
    return -torch.sum(p * torch.log(p + 1e-12), dim=-1)


def confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Probability ``[B, W]`` (float64) that the untempered model gives to ``tokens``."""
    p = F.softmax(logits.to(torch.float64), dim=-1)
    return torch.gather(p, -1, tokens.unsqueeze(-1)).squeeze(-1)


def gumbel_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """LLaDA sampling: argmax at T = 0, else float64 Gumbel-max ``argmax(exp(l) / (-ln U)^T)``, U ~ U(0, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    l64 = logits.to(torch.float64)
    noise = torch.rand(l64.shape, dtype=torch.float64, device=l64.device, generator=generator)
    return (l64.exp() / (-torch.log(noise)) ** temperature).argmax(dim=-1)


def multinomial_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Dream sampling: argmax at T = 0, else ``multinomial(softmax(l / T))`` at every position."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def random_scores(shape: torch.Size, device, generator: torch.Generator | None) -> torch.Tensor:
    """``remasking='random'``: Uniform(0, 1) draws replace confidences or entropies."""
    return torch.rand(shape, dtype=torch.float64, device=device, generator=generator)


def _best_one(scores: torch.Tensor, candidates: torch.Tensor, lowest: bool) -> torch.Tensor:
    """One-hot ``[B, W]`` of the best candidate per row (none for rows without candidates)."""
    fill = INF if lowest else -INF
    masked = torch.where(candidates, scores, fill)
    idx = masked.argmin(dim=-1) if lowest else masked.argmax(dim=-1)
    one = torch.zeros_like(candidates)
    one.scatter_(1, idx.unsqueeze(1), True)
    return one & candidates


def commit_entropy_llada(h: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ENT_LLADA``: the lowest-entropy candidate always, the others iff ``H <= threshold``."""
    return (candidates & (h <= threshold)) | _best_one(h, candidates, lowest=True)


def commit_entropy_dream(h: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ENT_DREAM``: every candidate with ``H < threshold`` (strict), no forced top-1."""
    return candidates & (h < threshold)


def commit_confidence(conf: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """``CONF_THR`` (Fast-dLLM): the most confident candidate always, the others iff ``conf >= threshold``."""
    return (candidates & (conf >= threshold)) | _best_one(conf, candidates, lowest=False)


def commit_quota(conf: torch.Tensor, candidates: torch.Tensor, quota: torch.Tensor, k_max: int) -> torch.Tensor:
    """``QUOTA``: the ``quota[b]`` most confident candidates of each row (``quota`` ``[B]`` long on the device,
    ``k_max`` its maximum, known on the host)."""
    out = torch.zeros_like(candidates)
    if k_max <= 0:
        return out
    masked = torch.where(candidates, conf, -INF)
    _, idx = torch.topk(masked, k=min(k_max, masked.shape[1]), dim=-1)
    keep = torch.arange(idx.shape[1], device=idx.device)[None, :] < quota[:, None].to(idx.device)
    out.scatter_(1, idx, keep)
    return out & candidates
