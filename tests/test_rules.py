"""The commit rules and scores against straightforward per-row loops written the way the reference writes them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d3llm.decoding import rules


def reference_entropy(logits):
    p = F.softmax(logits.to(torch.float64), dim=-1)
    return -torch.sum(p * torch.log(p + 1e-12), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_is_bit_identical_to_the_reference_formula(dtype):
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0, 60.0):
        logits = (torch.randn(2, 13, 97, generator=g) * scale).to(dtype)
        assert torch.equal(rules.entropy(logits), reference_entropy(logits))


def test_argmax_excluding_matches_logit_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 20, 50, generator=g)
    logits[0, :5, 7] = 100.0  # the excluded token would win there
    masked = logits.clone()
    masked[..., 7] = -float("inf")
    probs = F.softmax(logits.to(torch.float64), dim=-1)
    probs[..., 7] = -1.0
    assert torch.equal(probs.argmax(-1), masked.argmax(-1))  # float64 softmax keeps the logits' order
    before = logits.clone()
    assert torch.equal(rules.argmax_excluding(logits, 7), masked.argmax(-1))
    assert torch.equal(logits, before)  # untouched unless inplace
    assert torch.equal(rules.argmax_excluding(logits.clone(), 7, inplace=True), masked.argmax(-1))
    assert torch.equal(rules.gumbel_sample(logits, 0.0, None, exclude=7), masked.argmax(-1))


def loop_entropy_llada(h, cand, threshold):
    """The reference's get_transfer_index_entropy: top-k lowest entropies, the first always, the rest if <= τ."""
    out = np.zeros_like(cand)
    for j in range(h.shape[0]):
        scores = np.where(cand[j], h[j], np.inf)
        k = int(cand[j].sum())
        order = np.argsort(scores, kind="stable")[:k]
        for rank, idx in enumerate(order):
            out[j, idx] = rank == 0 or h[j, idx] <= threshold
    return out


def loop_confidence(conf, cand, threshold):
    out = np.zeros_like(cand)
    for j in range(conf.shape[0]):
        order = np.argsort(np.where(cand[j], -conf[j], np.inf), kind="stable")[: int(cand[j].sum())]
        for rank, idx in enumerate(order):
            out[j, idx] = rank == 0 or conf[j, idx] >= threshold
    return out


@pytest.mark.parametrize("seed", range(5))
def test_commit_rules_match_per_row_loops(seed):
    rng = np.random.default_rng(seed)
    h = rng.random((6, 40)) * 2
    cand = rng.random((6, 40)) < 0.6
    cand[3] = False  # a row without candidates commits nothing
    for tau in (0.0, 0.3, 1.0, 5.0):
        assert (rules.commit_entropy_llada(h, cand, tau) == loop_entropy_llada(h, cand, tau)).all()
        assert (rules.commit_confidence(h, cand, tau) == loop_confidence(h, cand, tau)).all()
        assert (rules.commit_entropy_dream(h, cand, tau) == (cand & (h < tau))).all()
    quota = rng.integers(0, 6, size=6)
    got = rules.commit_quota(h, cand, quota)
    for j in range(6):
        want = min(quota[j], cand[j].sum())
        assert got[j].sum() == want and not (got[j] & ~cand[j]).any()
        if want:  # the chosen ones are the most confident candidates
            assert h[j][got[j]].min() >= h[j][cand[j] & ~got[j]].max(initial=-np.inf)
    k = rng.integers(0, 5, size=6)
    got = rules.commit_lowest_k(h, cand, k, 0.5)
    for j in range(6):
        lowest = np.argsort(np.where(cand[j], h[j], np.inf), kind="stable")[: min(k[j], cand[j].sum())]
        want = np.zeros(40, dtype=bool)
        for rank, idx in enumerate(lowest):
            want[idx] = rank == 0 or h[j, idx] < 0.5
        assert (got[j] == want).all()


def eb_by_definition(h, candidates, gamma):
    """EB-Sampler's rule as the paper states it, per row: the longest prefix U of the candidates in ascending
    entropy (ties by position) with sum(H_U) - max(H_U) <= gamma, never empty."""
    out = np.zeros_like(candidates)
    for r in range(h.shape[0]):
        order = sorted(np.flatnonzero(candidates[r]), key=lambda i: (h[r, i], i))
        for n in range(len(order), 0, -1):
            chosen = [h[r, i] for i in order[:n]]
            if n == 1 or sum(chosen[:-1]) <= gamma:  # in ascending order the max is the last
                out[r, order[:n]] = True
                break
    return out


@pytest.mark.parametrize("gamma", [0.0, 1e-3, 0.05, 0.3, 1.0, 5.0])
def test_entropy_budget_rule_matches_its_definition(gamma):
    rng = np.random.default_rng(0)
    for _ in range(50):
        h = rng.exponential(0.2, size=(3, 11)) * (rng.random((3, 11)) < 0.8)  # zeros (certain tokens) included
        h[0, :4] = h[0, 0]  # ties
        candidates = rng.random((3, 11)) < 0.7
        candidates[2] = False  # a row without candidates commits nothing
        got = rules.commit_entropy_budget(h, candidates, gamma)
        assert np.array_equal(got, eb_by_definition(h, candidates, gamma))
        assert (got.sum(1) >= candidates.any(1)).all()


def test_entropy_budget_extremes():
    h = np.array([[0.4, 0.1, 0.2, 0.3]])
    candidates = np.array([[True, True, True, False]])
    assert rules.commit_entropy_budget(h, candidates, 0.0).tolist() == [[False, True, False, False]]
    assert rules.commit_entropy_budget(h, candidates, 0.31).tolist() == [[True, True, True, False]]
    assert rules.commit_entropy_budget(h, candidates, 0.29).tolist() == [[False, True, True, False]]
