"""Token scores, sampling and commit rules shared by the decoders (SPEC 4.0).

Two halves, matching the engine's split of work:

* **scoring** (torch, on the model's device): entropies, confidences and sampled tokens of the scored positions,
  computed from logits ``[n, K, V]``;
* **commit rules** (numpy, on the host): given the scores ``[n, K]`` and the candidate mask ``[n, K]``, which
  positions a step commits (``[n, K]`` bool). They are vectorised over rows and positions.

Numerics follow the reference exactly, because commit decisions compare these values with thresholds: entropy and
confidence come from ``softmax(float64(logits))`` of the **untempered** logits, and entropy is
``-sum(p * ln(p + 1e-12))`` in nats. Ties resolve to the first position, as ``torch.argmin``/``argmax`` do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INF = float("inf")


# -- scoring (device) ---------------------------------------------------------------------------------------------

def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``[n, K]`` (float64, nats) of logits ``[n, K, V]``.

    The operations of ``-sum(p * log(p + 1e-12))`` on ``p = softmax(float64(logits))`` in the same order
    (bit-identical to the reference), with fewer temporaries."""
    p = F.softmax(logits, dim=-1, dtype=torch.float64)
    return (p + 1e-12).log_().mul_(p).sum(dim=-1).neg_()


def confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Probability ``[n, K]`` (float64) that the untempered model gives to ``tokens``."""
    p = F.softmax(logits.to(torch.float64), dim=-1)
    return torch.gather(p, -1, tokens.unsqueeze(-1)).squeeze(-1)


def argmax_excluding(logits: torch.Tensor, exclude: int | None, inplace: bool = False) -> torch.Tensor:
    """Greedy tokens ``[n, K]`` of logits ``[n, K, V]`` that are never ``exclude``.

    The tokens of the reference's argmax over ``softmax(float64(logits))``: float64 softmax keeps every strict order
    of float32 or bfloat16 logits, and ties stay ties (the first index wins in both). ``inplace=True`` overwrites the
    excluded column of ``logits`` (cheaper, for callers that no longer need them); otherwise ``logits`` is untouched.
    """
    if exclude is None:
        return logits.argmax(dim=-1)
    if inplace:
        logits[..., exclude] = -INF
        return logits.argmax(dim=-1)
    top2 = logits.topk(2, dim=-1).indices
    return torch.where(top2[..., 0] == exclude, top2[..., 1], top2[..., 0])


def gumbel_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                  exclude: int | None = None) -> torch.Tensor:
    """LLaDA sampling: argmax at T = 0, else float64 Gumbel-max ``argmax(exp(l) / (-ln U)^T)``, U ~ U(0, 1).

    ``exclude`` (the mask id) is never chosen. The reference can "commit" the mask token when a model ranks it first
    (the position then stays masked and decoding spins to the step cap); a trained model never does, so excluding
    it changes nothing else.
    """
    if temperature == 0:
        return argmax_excluding(logits, exclude)
    l64 = logits.to(torch.float64)
    noise = torch.rand(l64.shape, dtype=torch.float64, device=l64.device, generator=generator)
    scores = l64.exp() / (-torch.log(noise)) ** temperature
    if exclude is not None:
        scores[..., exclude] = -INF
    return scores.argmax(dim=-1)


def multinomial_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                       exclude: int | None = None) -> torch.Tensor:
    """Dream sampling: argmax at T = 0, else ``multinomial(softmax(l / T))`` at every position (``exclude``: as in
    :func:`gumbel_sample`)."""
    if temperature == 0:
        return gumbel_sample(logits, 0.0, None, exclude)
    probs = F.softmax(logits / temperature, dim=-1)
    if exclude is not None:
        probs[..., exclude] = 0.0
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


# -- per-row randomness ---------------------------------------------------------------------------------------------
# A row's draws come from its own generator over its own entries (the first ``widths[i]`` of its row), in the order
# a batch of one would draw them, so seeded sampling repeats per row whatever the batch around it. Rows at
# temperature 0 draw nothing and are handled vectorised.

def sample_rows(sampler, logits: torch.Tensor, temperature: np.ndarray, widths: np.ndarray, generators: list):
    """``sampler(logits, temperature, generator)`` (returning a tensor ``[rows, K]`` or a tuple of them) applied
    with each row's own temperature and generator to its first ``widths[i]`` entries; rows at temperature 0 run
    together with temperature 0 and no generator. Entries past a row's width are unspecified."""
    hot = np.flatnonzero(temperature > 0)
    out = sampler(logits, 0.0, None) if hot.size < temperature.size else None
    for i in hot:
        w = int(widths[i])
        got = sampler(logits[i : i + 1, :w], float(temperature[i]), generators[i])
        single = isinstance(got, torch.Tensor)
        got = (got,) if single else got
        if out is None:
            out = tuple(t.new_zeros((logits.shape[0], logits.shape[1])) for t in got)
            out = out[0] if single else out
        for dst, src in zip((out,) if single else out, got):
            dst[i, :w] = src[0]
    return out


def random_rows(widths: np.ndarray, k: int, generators: list, device, dtype=torch.float64) -> torch.Tensor:
    """``[n, k]`` Uniform(0, 1) draws, row i drawing its first ``widths[i]`` entries (the rest 0)."""
    if len(widths) == 1 and widths[0] == k:
        return torch.rand((1, k), dtype=dtype, device=device, generator=generators[0])
    out = torch.zeros((len(widths), k), dtype=dtype, device=device)
    for i, w in enumerate(widths.tolist()):
        out[i, :w] = torch.rand((1, w), dtype=dtype, device=device, generator=generators[i])[0]
    return out


def filter_top_p_top_k(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's nucleus and top-k filtering: removed entries get the dtype's minimum (not -inf)."""
    floor = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first entry over the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), floor)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = logits.masked_fill(logits < kth, floor)
    return logits


def dream_sample(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None,
                 score: str, generator: torch.Generator | None, exclude: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens``, in the logits' dtype: tokens from the processed distribution and a score.

    ``score``: ``"confidence"`` (probability of the chosen token), ``"margin"`` (top-1 minus top-2 probability) or
    ``"neg_entropy"`` (``sum p ln(p + 1e-10)`` of the processed distribution). ``exclude`` (the mask id) is never
    chosen; the scores still see the whole distribution. Returns ``(score, tokens)``.
    """
    if temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(filter_top_p_top_k(logits, top_p, top_k), dim=-1)
    choice = probs
    if exclude is not None:
        choice = probs.clone()
        choice[..., exclude] = 0.0
    if temperature > 0:
        flat = choice.reshape(-1, choice.shape[-1]).float()
        tokens = torch.multinomial(flat, 1, generator=generator).view(choice.shape[:-1])
    else:
        tokens = choice.argmax(dim=-1)
    conf = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)
    if score == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif score == "neg_entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, tokens


def dream_entropy(logits: torch.Tensor) -> torch.Tensor:
    """dParallel-Dream's entropy: in the logits' dtype, ``-sum p ln(p + 1e-8)``."""
    p = torch.softmax(logits, dim=-1)
    return -torch.sum(p * torch.log(p + 1e-8), dim=-1)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """numpy copies of device tensors, with one synchronisation for all of them (views on the CPU): the step's
    only device-to-host transfer. On CUDA every copy is queued without blocking (into pinned memory) and the
    stream is synchronised once. bfloat16, which numpy lacks, comes back as float32 (exactly: every bfloat16 value
    is a float32 value, so orders and ties are kept)."""
    wide = [t.float() if t.dtype == torch.bfloat16 else t for t in tensors]
    if not any(t.device.type == "cuda" for t in wide):
        return [t.cpu().numpy() for t in wide]
    host = [t.to("cpu", non_blocking=True) for t in wide]
    torch.cuda.current_stream(next(t.device for t in wide if t.device.type == "cuda")).synchronize()
    return [t.numpy() for t in host]


# -- commit rules (host) ------------------------------------------------------------------------------------------

def add_best(transfer: np.ndarray, scores: np.ndarray, candidates: np.ndarray, lowest: bool) -> np.ndarray:
    """Add to ``transfer`` (in place) the best-scoring candidate of each row that has one (the first on ties)."""
    masked = np.where(candidates, scores, INF if lowest else -INF)
    best = masked.argmin(axis=1, keepdims=True) if lowest else masked.argmax(axis=1, keepdims=True)
    transfer |= candidates & (np.arange(transfer.shape[1]) == best)  # elementwise: cheaper than fancy indexing
    return transfer


def commit_entropy_llada(h: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """``ENT_LLADA``: the lowest-entropy candidate always, the others iff ``H <= threshold``."""
    return add_best(candidates & (h <= threshold), h, candidates, lowest=True)


def commit_entropy_dream(h: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """``ENT_DREAM``: every candidate with ``H < threshold`` (strict), no forced top-1."""
    return candidates & (h < threshold)


def commit_confidence(conf: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """``CONF_THR`` (Fast-dLLM): the most confident candidate always, the others iff ``conf >= threshold``."""
    return add_best(candidates & (conf >= threshold), conf, candidates, lowest=False)


def commit_quota(conf: np.ndarray, candidates: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """``QUOTA``: the ``quota[b]`` most confident candidates of each row."""
    order = np.argsort(np.where(candidates, -conf, INF), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
    return candidates & (rank < quota[:, None])


def commit_lowest_k(score: np.ndarray, candidates: np.ndarray, k: np.ndarray, threshold: float) -> np.ndarray:
    """``ENT_DPAR_DREAM``: among the ``k[b]`` lowest-score candidates, the lowest always and the others iff
    ``score < threshold``."""
    order = np.argsort(np.where(candidates, score, INF), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
    return candidates & (rank < k[:, None]) & ((rank == 0) | (score < threshold))


def commit_entropy_budget(h: np.ndarray, candidates: np.ndarray, gamma: np.ndarray | float) -> np.ndarray:
    """``EB`` (EB-Sampler, arXiv 2505.24857): order the candidates by entropy, lowest first, and commit the longest
    prefix ``U`` of that order whose entropies, less the largest of them, sum to at most ``gamma``:
    ``sum_{j in U} H_j - max_{j in U} H_j <= gamma``. In ascending order the largest is the last, so the test is
    that the entropies *before* each position sum to at most ``gamma``; the lowest-entropy candidate is always
    committed (``gamma = 0``: one token per step, unless the next ones have zero entropy; ``inf``: all). ``gamma``
    is a scalar or ``[n, 1]``; ties keep position order."""
    order = np.argsort(np.where(candidates, h, INF), axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(candidates, h, 0.0), order, axis=1)
    before = np.zeros_like(ranked)  # the sum of the strictly lower-ranked entropies, added in rank order
    np.cumsum(ranked[:, :-1], axis=1, out=before[:, 1:])
    take = np.take_along_axis(candidates, order, axis=1) & (before <= gamma)
    take &= np.cumprod(take, axis=1).astype(bool)  # a prefix of the order
    transfer = np.zeros_like(candidates)
    np.put_along_axis(transfer, order, take, axis=1)
    return transfer


def commit_factor(conf: np.ndarray, candidates: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """``FACTOR`` (Fast-dLLM's factor rule, Wu et al., arXiv 2505.22618): order the candidates by confidence,
    highest first, and commit the first ``n`` where every rank ``k <= n`` (1-based) has ``(k + 1)(1 - c_(k)) <= f``,
    i.e. ``c_(k) >= 1 - f / (k + 1)``; the most confident candidate always. The bound on rank k tightens as k grows,
    so the accepted ranks form a prefix: more tokens in one step need each to be more certain. ``factor`` is a
    scalar or ``[n, 1]``; ties keep position order."""
    order = np.argsort(np.where(candidates, -conf, INF), axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(candidates, conf, -INF), order, axis=1)
    rank = np.arange(1, conf.shape[1] + 1)[None, :]
    take = np.take_along_axis(candidates, order, axis=1) & ((rank + 1) * (1.0 - ranked) <= factor)
    take[:, 0] |= np.take_along_axis(candidates, order[:, :1], axis=1)[:, 0]
    take &= np.cumprod(take, axis=1).astype(bool)
    transfer = np.zeros_like(candidates)
    np.put_along_axis(transfer, order, take, axis=1)
    return transfer


def masked_runs(candidates: np.ndarray) -> np.ndarray:
    """``[n, K]`` the index (0, 1, ...) of the maximal run of consecutive candidates each entry belongs to, counted
    per row from the left (-1 where an entry is no candidate). Columns are consecutive positions."""
    starts = candidates & ~np.pad(candidates[:, :-1], ((0, 0), (1, 0)))
    return np.where(candidates, np.cumsum(starts, axis=1) - 1, -1)


def commit_hierarchy(conf: np.ndarray, candidates: np.ndarray, threshold: np.ndarray | float,
                     low_threshold: float) -> np.ndarray:
    """``HIER`` (dInfer's hierarchical decoder, arXiv 2510.08666): in every maximal run of consecutive candidates,
    the most confident one(s) if ``conf > low_threshold``; every candidate with ``conf > threshold``; and the most
    confident candidate of the row always. Commitments are spread out, one per masked hole, so parallel tokens are
    rarely neighbours. Ties of a run's maximum all count (as in dInfer). Columns must be consecutive positions."""
    n, k = conf.shape
    run = masked_runs(candidates)
    flat = np.where(candidates, np.arange(n)[:, None] * k + run, n * k)  # one slot per (row, run); n*k: none
    best = np.full(n * k + 1, -INF)
    np.maximum.at(best, flat.ravel(), np.where(candidates, conf, -INF).ravel())
    peak = candidates & (conf == best[flat]) & (conf > low_threshold)
    return add_best(peak | (candidates & (conf > threshold)), conf, candidates, lowest=False)


def commit_local_leap(conf: np.ndarray, candidates: np.ndarray, threshold: np.ndarray | float,
                      relaxed_threshold: float, radius: int) -> np.ndarray:
    """``LEAP`` (LocalLeap, arXiv 2510.07081; our reading, its code is not public): *anchors* are the candidates
    with ``conf >= threshold``; every candidate within ``radius`` positions of an anchor is also committed when
    ``conf >= relaxed_threshold`` (a high-confidence token makes its neighbours reliable at a lower bar); the most
    confident candidate always. Distance counts positions, committed ones included, and no chain of candidates
    between a neighbour and its anchor is required. Columns must be consecutive positions."""
    anchor = candidates & (conf >= threshold)
    near = anchor.copy()
    for d in range(1, radius + 1):  # radius is small (a few positions): shifts beat a convolution
        near[:, d:] |= anchor[:, :-d]
        near[:, :-d] |= anchor[:, d:]
    chosen = anchor | (candidates & near & (conf >= relaxed_threshold))
    return add_best(chosen, conf, candidates, lowest=False)
