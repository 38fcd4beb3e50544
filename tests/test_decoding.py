"""The decoding engine and its methods: batching, caches, sampling, trajectories, callbacks."""

import pytest
import torch

import d3llm
from decoding_models import BLOCK, EOS, GEN, prompts

MB = dict(threshold=0.5, block_add_threshold=0.1, decoded_token_threshold=0.95)
SETTINGS = {
    "vanilla": ("vanilla", dict(steps=GEN)),
    "vanilla_2_per_step": ("vanilla", dict(steps=GEN // 2)),
    "block_entropy": ("block_entropy", dict(steps=GEN, threshold=0.5)),
    "eb_sampler": ("eb_sampler", dict(steps=GEN, threshold=0.5)),
    "fast_dllm_factor": ("fast_dllm_factor", dict(steps=GEN, factor=1.0)),
    "fast_dllm_factor_none": ("fast_dllm_factor", dict(steps=GEN, factor=2.0, cache="none")),
    "hierarchy": ("hierarchy", dict(steps=GEN, threshold=0.9, low_threshold=0.3)),
    "local_leap": ("local_leap", dict(steps=GEN, threshold=0.8, relaxed_threshold=0.5)),
    "local_leap_prefix": ("local_leap", dict(steps=GEN, cache="prefix", radius=1)),
    "credit": ("credit", dict(steps=GEN)),
    "credit_none": ("credit", dict(steps=GEN, cache="none", threshold=0.7)),
    "klass": ("klass", dict(steps=GEN, kl_threshold=0.05)),
    "fast_dllm_none": ("fast_dllm", dict(steps=GEN, cache="none")),
    "fast_dllm_prefix": ("fast_dllm", dict(steps=GEN, cache="prefix")),
    "fast_dllm_dual": ("fast_dllm", dict(steps=GEN, cache="dual")),
    "fast_dllm_dual_quota": ("fast_dllm", dict(steps=GEN // 4, cache="dual", threshold=None)),
    "multi_block": ("multi_block", dict(MB)),
    "multi_block_early_stop": ("multi_block", dict(MB, early_stop=True)),
    "multi_block_kv_d1": ("multi_block", dict(MB, cache_delay_iter=1)),
    "fast_dllm_dual_exit": ("fast_dllm", dict(steps=GEN, cache="dual", early_exit="sched", exit_high=6.0,
                                              exit_low=2.0)),
    "vanilla_exit_answer": ("vanilla", dict(steps=GEN, early_exit="prophet", exit_answer_start=4, exit_high=6.0)),
    "multi_block_exit": ("multi_block", dict(MB, cache_delay_iter=1, early_exit="prophet", exit_high=6.0,
                                             exit_low=2.0)),
    "adablock_dual": ("adablock", dict(threshold=0.8, delimiter_ids=[1, 2, 3], delimiter_threshold=0.2)),
    "adablock_prefix": ("adablock", dict(cache="prefix", delimiter_ids=[4, 5], delimiter_threshold=0.1)),
    "multi_block_budget": ("multi_block", dict(MB, commit_rule="budget", cache_delay_iter=2, early_stop=True)),
    "multi_block_kv_d2_r3_es": ("multi_block", dict(MB, cache_delay_iter=2, refresh_interval=3, early_stop=True)),
    "multi_block_kv_exact": ("multi_block", dict(MB, cache_delay_iter=1, refresh_interval=2, reference_exact=True)),
    "multi_block_suffix": ("multi_block", dict(MB, cache_delay_iter=1, suffix_cache=True, suffix_refresh_interval=3,
                                               refresh_while_waiting=False)),
    "multi_block_suffix_d2_r3_es": ("multi_block", dict(MB, cache_delay_iter=2, refresh_interval=3, early_stop=True,
                                                        suffix_cache=True, suffix_refresh_interval=None)),
}


def run(model, batch, name, **extra):
    method, params = SETTINGS[name]
    return generate(model, batch, method, **params, **extra)


def generate(model, batch, method, **params):
    params.setdefault("max_new_tokens", GEN)
    if not (model.family == "dream" and method == "vanilla"):  # Dream's vanilla decoder has a single block
        params.setdefault("block_size", BLOCK)
    return d3llm.generate(model, batch, method, **params)


DREAM_ONLY = {"dream_vanilla_entropy": ("vanilla", dict(steps=GEN, alg="entropy")),
              "dream_vanilla_margin": ("vanilla", dict(steps=GEN // 2, alg="topk_margin"))}
LLADA_ONLY = {"fast_dllm_dual_quota", "klass", "adablock_dual", "adablock_prefix"}
CASES = [("llada", name) for name in SETTINGS] + [("dream", name) for name in SETTINGS if name not in LLADA_ONLY]
CASES += [("dream", name) for name in DREAM_ONLY]
SETTINGS.update(DREAM_ONLY)


@pytest.mark.parametrize("family,name", CASES)
def test_batch_of_different_lengths_equals_each_row_alone(trained_models, family, name):
    model = trained_models[family]
    batch = prompts(5, seed=11)
    assert len({len(p) for p in batch}) > 1  # really different lengths
    together = run(model, batch, name)
    width = together.gen_start
    for i, p in enumerate(batch):
        alone = run(model, [p], name)
        assert together.sequences[i, width:].tolist() == alone.sequences[0, len(p):].tolist(), (name, i)
        assert together.nfe[i] == alone.nfe[0], (name, i)
        assert together.commit_step[i].tolist() == alone.commit_step[0].tolist(), (name, i)
        assert together.tokens[i] == alone.tokens[0]
        assert together.sequences[i, width - len(p):width].tolist() == p  # the prompt, left-padded


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cache_refreshed_every_step_equals_no_cache(trained_models, family):
    model = trained_models[family]
    batch = prompts(6, seed=3)
    plain = run(model, batch, "multi_block_early_stop")
    for delay in (1, 2):
        refreshed = d3llm.generate(model, batch, "multi_block", max_new_tokens=GEN, block_size=BLOCK, early_stop=True,
                                   cache_delay_iter=delay, refresh_interval=1, **MB)
        assert torch.equal(refreshed.sequences, plain.sequences)
        assert torch.equal(refreshed.nfe, plain.nfe)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cache_that_never_fills_equals_no_cache(trained_models, family):
    model = trained_models[family]
    batch = prompts(4, seed=5)
    plain = run(model, batch, "multi_block")
    never = d3llm.generate(model, batch, "multi_block", max_new_tokens=GEN, block_size=BLOCK, cache_delay_iter=10000,
                           **MB)
    assert torch.equal(never.sequences, plain.sequences) and torch.equal(never.nfe, plain.nfe)


def test_delayed_cache_saves_compute_and_stays_close(trained_models):
    """With D = 1 most steps read the cache; the result is approximate but close to the uncached one."""
    model = trained_models["llada"]
    batch = prompts(8, seed=9)
    plain = run(model, batch, "multi_block")
    cached = run(model, batch, "multi_block_kv_d1")
    agree = (cached.sequences == plain.sequences).float().mean()
    assert agree > 0.9


SEEDED = [
    ("vanilla", dict(steps=GEN)), ("multi_block", dict(MB, cache_delay_iter=1)),
    ("fast_dllm", dict(steps=GEN, cache="prefix")), ("block_entropy", dict(steps=GEN)),
    ("eb_sampler", dict(steps=GEN, threshold=0.5)), ("multi_block", dict(MB, commit_rule="budget")),
    ("vanilla", dict(steps=GEN, remasking="random", temperature=0.0)),
    ("fast_dllm_factor", dict(steps=GEN)), ("hierarchy", dict(steps=GEN)), ("local_leap", dict(steps=GEN)),
    ("credit", dict(steps=GEN)), ("klass", dict(steps=GEN)),
]


@pytest.mark.parametrize("family,method,params", [(f, m, p) for f in ("llada", "dream") for m, p in SEEDED
                                                  if not (f == "dream" and m == "klass")])  # klass: LLaDA only
def test_sampling_with_a_seed_repeats(trained_models, family, method, params):
    model = trained_models[family]
    batch = prompts(3, seed=2)
    kw = dict(dict(temperature=1.0), **params)
    if family == "dream" and kw.get("remasking") == "random":
        kw = dict(steps=GEN, alg="origin")  # Dream's random decoder: unmasking by chance
    a = generate(model, batch, method, seed=123, **kw)
    b = generate(model, batch, method, seed=123, **kw)
    c = generate(model, batch, method, seed=124, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)
    assert not torch.equal(a.sequences, c.sequences)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_entropy_budget_spans_one_token_per_step_to_one_step_per_block(trained_models, family):
    """EB-Sampler's gamma: 0 commits one token per forward (the trained models are never exactly certain twice
    in a step); a budget beyond any sum of entropies commits a whole block per forward; between, fewer forwards
    as gamma grows."""
    model = trained_models[family]
    batch = prompts(4, seed=5)
    nfe = {g: generate(model, batch, "eb_sampler", threshold=g) for g in (0.0, 0.05, 1.0, 1e6)}
    assert nfe[0.0].nfe.tolist() == [GEN] * 4
    assert nfe[1e6].nfe.tolist() == [GEN // BLOCK] * 4
    totals = [int(r.nfe.sum()) for r in nfe.values()]
    assert totals == sorted(totals, reverse=True) and totals[2] < GEN * 4


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_multi_block_budget_commits_more_as_the_budget_grows(trained_models, family):
    """multi_block with EB-Sampler's rule: the budget is spent over the candidates of every active block together.
    Fewer forwards as it grows, down to what an unbounded per-token threshold gives; at the same values, other
    commits than the per-token entropy threshold. (Budget 0 is not one token per forward here: the first fully
    activated block's guarantee adds its best mask when the step's lowest entropy lies in a later block.)"""
    model = trained_models[family]
    batch = prompts(4, seed=5)
    kw = dict(MB, cache_delay_iter=1)
    values = (0.0, 0.05, 1.0, 1e6)
    budget = {g: generate(model, batch, "multi_block", **dict(kw, threshold=g, commit_rule="budget")) for g in values}
    totals = [int(r.nfe.sum()) for r in budget.values()]
    assert totals == sorted(totals, reverse=True) and totals[-1] < totals[0]
    assert totals[0] >= 4 * GEN // 2  # at most two uncertain tokens per step
    per_token = {g: generate(model, batch, "multi_block", **dict(kw, threshold=g)) for g in values[1:]}
    assert torch.equal(budget[1e6].nfe, per_token[1e6].nfe)  # both commit every candidate
    assert any(not torch.equal(budget[g].nfe, per_token[g].nfe) for g in values[1:3])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_factor_rule_commits_more_as_the_factor_grows(trained_models, family):
    """Fast-dLLM's factor rule: f = 0 commits one token per forward (only a certain token passes the bound); a
    factor beyond any rank's ``(k + 1)(1 - c_k)`` commits the whole block in one forward; fewer forwards as f
    grows. Plain thresholding has no such knob."""
    model = trained_models[family]
    batch = prompts(4, seed=5)
    runs = {f: generate(model, batch, "fast_dllm_factor", factor=f, cache="none") for f in (0.0, 0.5, 2.0, 1e6)}
    if family == "llada":  # Dream's block-initial forward commits one position and cannot finish a block
        assert runs[0.0].nfe.tolist() == [GEN] * 4
        assert runs[1e6].nfe.tolist() == [GEN // BLOCK] * 4
    totals = [int(r.nfe.sum()) for r in runs.values()]
    assert totals == sorted(totals, reverse=True) and totals[2] < totals[0]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_zoo_rules_differ_from_plain_thresholding_and_reduce_to_it(trained_models, family):
    """hierarchy with low_threshold 1 and local_leap with relaxed_threshold 1 add nothing to Fast-dLLM's rule, and
    credit with alpha 0 ranks the raw logits: each then decodes exactly like fast_dllm. With their own rules they
    commit differently: fewer forwards (an extra token per masked run, an anchor's neighbours); credited tokens
    change what is decoded (planted-logit tests of the rules and the credit, both families' frame alike:
    tests/test_zoo_rules.py)."""
    model = trained_models[family]
    batch = prompts(6, seed=8)
    base = generate(model, batch, "fast_dllm", steps=GEN, threshold=0.9)
    same = {"hierarchy": dict(low_threshold=1.0), "local_leap": dict(relaxed_threshold=1.0),
            "credit": dict(credit_alpha=0.0)}
    own = {"hierarchy": dict(low_threshold=0.2), "local_leap": dict(relaxed_threshold=0.3, threshold=0.9),
           "credit": dict(credit_alpha=2.0, boost_gamma=0.0)}
    for method in same:
        plain = generate(model, batch, method, steps=GEN, threshold=0.9, **same[method])
        assert torch.equal(plain.sequences, base.sequences) and torch.equal(plain.nfe, base.nfe), method
        if family == "dream":  # the tiny Dream commits few tokens per step: one masked run, no anchors
            continue
        ruled = generate(model, batch, method, steps=GEN, **{"threshold": 0.9, **own[method]})
        if method == "credit":
            assert not torch.equal(ruled.sequences, base.sequences)
        else:
            assert int(ruled.nfe.sum()) < int(base.nfe.sum()), method


def test_klass_without_stability_is_vanilla_and_with_it_saves_forwards(trained_models):
    """KLASS: a KL threshold of 0 makes no position ever stable, so every step takes the quota schedule's top-k --
    vanilla's tokens and forwards exactly -- even at confidence threshold 0, where plain thresholding would commit
    the whole block at once. A loose KL threshold makes positions ready after ``kl_history`` steps: fewer forwards;
    with history 1 and no bars at all, a block is ready at its first forward."""
    model = trained_models["llada"]
    batch = prompts(5, seed=3)
    vanilla = generate(model, batch, "vanilla", steps=GEN)
    never = generate(model, batch, "klass", steps=GEN, threshold=0.0, kl_threshold=0.0)
    assert torch.equal(never.sequences, vanilla.sequences) and torch.equal(never.nfe, vanilla.nfe)
    loose = generate(model, batch, "klass", steps=GEN, kl_threshold=0.05)
    assert int(loose.nfe.sum()) < int(vanilla.nfe.sum())
    at_once = generate(model, batch, "klass", steps=GEN, threshold=0.0, kl_threshold=1e9, kl_history=1)
    assert at_once.nfe.tolist() == [GEN // BLOCK] * 5


def test_one_token_per_forward_trajectory(trained_models):
    """Vanilla with steps == max_new_tokens commits exactly one position per forward: commit_step is a permutation,
    and replaying it reconstructs every intermediate canvas the callback saw."""
    model = trained_models["llada"]
    batch = prompts(3, seed=4)
    seen = []
    result = d3llm.generate(model, batch, "vanilla", steps=GEN, max_new_tokens=GEN, block_size=BLOCK,
                            callback=lambda ev: seen.append((ev.step, ev.rows, ev.canvas.copy(), ev.committed.copy())))
    assert result.nfe.tolist() == [GEN] * 3
    for row in result.commit_step:
        assert sorted(row.tolist()) == list(range(GEN))
    g = result.gen_start
    for step, rows, canvas, committed in seen:
        assert committed.sum(axis=1).tolist() == [1] * len(rows)
        for i, r in enumerate(rows):
            gen = torch.from_numpy(canvas[i, g:])
            replay = torch.where(result.commit_step[r] <= step, result.generated[r], torch.tensor(model.mask_token_id))
            assert torch.equal(gen, replay)
    # blocks are decoded left to right
    for row in result.commit_step:
        firsts = [int(row[b * BLOCK:(b + 1) * BLOCK].min()) for b in range(GEN // BLOCK)]
        assert firsts == sorted(firsts)


def test_early_stop_fills_with_eos_and_saves_forwards(trained_models):
    model = trained_models["llada"]
    batch = prompts(6, seed=8)
    plain = run(model, batch, "multi_block")
    early = run(model, batch, "multi_block_early_stop")
    assert int(early.nfe.sum()) < int(plain.nfe.sum())
    for i, row in enumerate(early.generated.tolist()):
        if EOS in row:
            first = row.index(EOS)
            assert all(t == EOS for t in row[first:])
            assert early.tokens[i] == row[:first]
        assert (early.commit_step[i] >= 0).all()


def test_rows_leave_the_batch_when_they_finish(trained_models):
    """A row that finishes early stops taking part in forwards (its NFE is its own)."""
    model = trained_models["llada"]
    batch = prompts(6, seed=8)
    result = run(model, batch, "multi_block_early_stop")
    assert len(set(result.nfe.tolist())) > 1
    steps = []
    run(model, batch, "multi_block_early_stop", callback=lambda ev: steps.append(len(ev.rows)))
    assert steps == sorted(steps, reverse=True) and steps[-1] < len(batch)
    assert len(steps) == int(result.nfe.max())


def test_tensor_input_with_padding_mask_equals_list_input(trained_models):
    model = trained_models["dream"]
    batch = prompts(3, seed=6)
    width = max(len(p) for p in batch)
    ids = torch.full((3, width), 0)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    a = run(model, batch, "multi_block")
    b = d3llm.generate(model, ids, "multi_block", attention_mask=mask, max_new_tokens=GEN, block_size=BLOCK, **MB)
    assert torch.equal(a.sequences[:, width:], b.sequences[:, width:]) and torch.equal(a.nfe, b.nfe)


def test_result_figures(trained_models):
    model = trained_models["llada"]
    result = run(model, prompts(4, seed=1), "multi_block_early_stop")
    assert result.num_tokens.tolist() == [len(t) for t in result.tokens]
    assert result.tokens_per_forward == pytest.approx(result.num_tokens.sum().item() / result.nfe.sum().item())
    assert 0 < result.model_time < result.wall_time
    assert result.loop_time == pytest.approx(result.wall_time - result.model_time)
    assert result.method == "multi_block" and result.params["threshold"] == 0.5
