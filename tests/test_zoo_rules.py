"""The decoder zoo's commit rules against straightforward per-row loops, and CreditDecoding's credit against its
dense definition (planted logits, no model)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d3llm.decoding import rules
from d3llm.decoding.canvas import build_canvas
from d3llm.decoding.methods import Credit, FastDLLM
from d3llm.decoding.methods.base import RowSetup


def loop_factor(conf, cand, f):
    out = np.zeros_like(cand)
    for r in range(conf.shape[0]):
        idx = sorted(np.flatnonzero(cand[r]), key=lambda i: (-conf[r, i], i))
        for k, i in enumerate(idx, start=1):
            if k > 1 and (k + 1) * (1 - conf[r, i]) > f:
                break
            out[r, i] = True
    return out


def loop_hierarchy(conf, cand, threshold, low):
    out = np.zeros_like(cand)
    for r in range(conf.shape[0]):
        i = 0
        while i < cand.shape[1]:
            if not cand[r, i]:
                i += 1
                continue
            j = i
            while j < cand.shape[1] and cand[r, j]:
                j += 1
            best = conf[r, i:j].max()
            if best > low:
                out[r, i:j] |= conf[r, i:j] == best
            i = j
        out[r] |= cand[r] & (conf[r] > threshold)
        if cand[r].any():
            out[r, int(np.argmax(np.where(cand[r], conf[r], -np.inf)))] = True
    return out


@pytest.mark.parametrize("seed", range(6))
def test_factor_and_hierarchy_rules_match_loops(seed):
    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0.3, 1.0, (5, 17)), 2)  # rounding plants ties
    cand = rng.uniform(size=(5, 17)) < 0.7
    cand[0] = False  # a row with nothing to commit
    for f in (0.0, 0.5, 1.0, 3.0):
        assert np.array_equal(rules.commit_factor(conf, cand, f), loop_factor(conf, cand, f)), f
    for low in (0.4, 0.7):
        assert np.array_equal(rules.commit_hierarchy(conf, cand, 0.9, low), loop_hierarchy(conf, cand, 0.9, low))


def test_zoo_rules_commit_what_plain_thresholding_does_not():
    conf = np.array([[0.99, 0.9, 0.8, 0.7]])
    cand = np.ones_like(conf, dtype=bool)
    assert rules.commit_confidence(conf, cand, 0.9).tolist() == [[True, True, False, False]]
    # factor 1: 2(0.01), 3(0.1), 4(0.2) <= 1 but 5(0.3) > 1
    assert rules.commit_factor(conf, cand, 1.0).tolist() == [[True, True, True, False]]
    assert rules.commit_factor(np.array([[0.99, 0.2, 0.95]]), np.ones((1, 3), bool), 1.0).tolist() == [
        [True, False, True]]  # ranks, not positions, form the prefix
    # hierarchy: one per masked run (its best, above 0.4), even below the threshold
    conf = np.array([[0.5, 0.6, 0.99, 0.3, 0.45, 0.2]])
    cand = np.array([[True, True, False, True, True, True]])
    assert rules.masked_runs(cand).tolist() == [[0, 0, -1, 1, 1, 1]]
    assert rules.commit_hierarchy(conf, cand, 0.9, 0.4).tolist() == [[False, True, False, False, True, False]]
    assert rules.commit_confidence(conf, cand, 0.9).tolist() == [[False, True, False, False, False, False]]
    # local leap: an anchor's neighbours within the radius at the relaxed bar
    conf = np.array([[0.95, 0.75, 0.75, 0.75, 0.6, 0.8]])
    cand = np.ones_like(conf, dtype=bool)
    assert rules.commit_local_leap(conf, cand, 0.9, 0.7, 2).tolist() == [[True, True, True, False, False, False]]
    assert rules.commit_local_leap(conf, cand, 0.9, 0.7, 1).tolist() == [[True, True, False, False, False, False]]
    assert rules.commit_confidence(conf, cand, 0.9).tolist() == [[True, False, False, False, False, False]]


MASK, V = 5, 6


def credit_setup(**params):
    method = Credit(Credit.Params.from_kwargs("credit", dict(max_new_tokens=8, block_size=8, cache="none", **params)),
                    family="llada", mask_id=MASK, vocab_size=V)
    canvas = build_canvas([np.array([1, 2, 3])], [8], mask_id=MASK, filler=-1, device="cpu")
    state = method.init_state(canvas, [RowSetup(method.params, None, None)])
    return method, canvas, state


def planted(probs_at):
    """Logits ``[1, 8, V]``: column c has the given distribution, the others a certain token 0."""
    logits = torch.full((1, 8, V), -30.0)
    logits[..., 0] = 0.0
    for col, probs in probs_at.items():
        logits[0, col] = torch.tensor(probs).log()
    return logits


def test_credit_accumulates_until_a_stable_token_passes_the_threshold():
    """A token at probability 0.8 every step never passes Fast-dLLM's 0.9; with credit (alpha 0.7, gamma 0.2,
    beta 0.8) its fused confidence is 0.865, 0.890, 0.903: committed at the third step, as the formula says."""
    logits = planted({2: [0.1, 0.05, 0.8, 0.05, 0.0, 0.0]})
    method, canvas, state = credit_setup()
    plain = FastDLLM(FastDLLM.Params.from_kwargs("fast_dllm", dict(max_new_tokens=8, block_size=8, cache="none")),
                     family="llada", mask_id=MASK, vocab_size=V)
    plain_state = plain.init_state(canvas, [RowSetup(plain.params, None, None)])
    got, want, plain_got = [], [], []
    credit = 0.0
    for _ in range(4):
        plan = method.plan(canvas, state)
        commit = method.commit(canvas, state, logits.clone(), plan)
        got.append(bool(commit.transfer[0, 2]))
        credit = 0.8 * credit + 0.8 ** 0.2
        fused = logits[0, 2].double() + 0.7 * torch.log1p(torch.tensor([0, 0, credit, 0, 0, 0], dtype=torch.float64))
        want.append(F.softmax(fused, -1)[2].item() >= 0.9)
        plain_got.append(bool(plain.commit(canvas, plain_state, logits.clone(), plain.plan(canvas, plain_state))
                              .transfer[0, 2]))
        assert commit.tokens[0, 2] == 2
    assert want == [False, False, True, True] and got == want
    assert plain_got == [False] * 4


def test_credit_table_equals_dense_credit():
    """The (token, credit) table per position gives the fused logits of dInfer's dense ``[block, V]`` credit over
    steps whose top-1 tokens change; a new block starts with none."""
    g = torch.Generator().manual_seed(0)
    method, canvas, state = credit_setup(boost_gamma=0.5, decay_beta=0.7, credit_alpha=1.3)
    dense = torch.zeros(8, V, dtype=torch.float64)
    for _ in range(8):
        logits = torch.randn(1, 8, V, generator=g) * 2
        logits[..., MASK] = -30.0
        fused = method.adjust_logits(canvas, state, logits, method.plan(canvas, state),
                                     np.ones((1, 8), dtype=bool))
        p = F.softmax(logits[0].float(), -1)
        top_p, top = p.max(-1)
        dense = 0.7 * dense
        dense[torch.arange(8), top] += top_p.double() ** 0.5
        want = logits[0].double() + 1.3 * torch.log1p(dense)
        assert torch.allclose(fused[0].double(), want, atol=1e-5)
    assert (state.credit_token >= 0).any()
    state.block[:] = 0
    canvas.x[0, 3:] = 1  # the block is full: update moves to the next block and drops the credit
    method.update(canvas, state, None)
    assert state.done.all() and (state.credit_token < 0).all() and (state.credit_value == 0).all()
