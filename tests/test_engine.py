"""The step-wise engine: rows that join a running batch and leave it, per-row parameters, events, cancellation,
bad requests, and the work counters."""

import numpy as np
import pytest

import d3llm
from d3llm import Engine, GenerationError
from decoding_models import BLOCK, GEN, prompts
from test_decoding import CASES, SETTINGS, generate

GENS = [GEN, BLOCK * 2, BLOCK * 3, GEN]  # per-row max_new_tokens (whole blocks)


def row_params(method, params, gen):
    """The per-row parameters of a row generating ``gen`` tokens (``steps`` scales with the length)."""
    own = {"max_new_tokens": gen}
    if "steps" in params and method != "multi_block":
        own["steps"] = params["steps"] * gen // GEN
    return own


def shared(model, method, params):
    kw = {k: v for k, v in params.items() if k != "steps"}
    if not (model.family == "dream" and method == "vanilla"):
        kw["block_size"] = BLOCK
    return kw


def alone(model, method, params, prompt, **own):
    return generate(model, [prompt], method, **{**params, **own})


def run_staggered(engine, requests, joins, limit=10000):
    """Add ``requests`` (kwargs) at the step indices ``joins``; run to the end. Returns outputs and events by id."""
    outputs, events, step = {}, {}, 0
    pending = sorted(zip(joins, range(len(requests))))
    while pending or engine.has_work:
        while pending and pending[0][0] <= step:
            _, i = pending.pop(0)
            engine.add_request(request_id=i, **requests[i])
        for ev in engine.step():
            events.setdefault(ev.request_id, []).append(ev)
            if ev.finished:
                outputs[ev.request_id] = ev.output
        step += 1
        assert step < limit
    return outputs, events


def assert_same(out, ref, prompt):
    assert out.generated.tolist() == ref.sequences[0, len(prompt):].tolist()
    assert out.nfe == int(ref.nfe[0])
    assert out.commit_step.tolist() == ref.commit_step[0].tolist()
    assert out.tokens == ref.tokens[0]


@pytest.mark.parametrize("family,name", CASES)
def test_staggered_rows_with_own_lengths_equal_each_row_alone(trained_models, family, name):
    """Rows of different prompt and generation lengths join a running batch mid-way (one shares its first forward
    with the others' later steps) and each decodes exactly as it does alone: tokens, NFE, trajectory."""
    model = trained_models[family]
    method, params = SETTINGS[name]
    batch = prompts(4, seed=21)
    engine = Engine(model, method, **shared(model, method, params))
    requests = [dict(prompt=p, **row_params(method, params, g)) for p, g in zip(batch, GENS)]
    outputs, _ = run_staggered(engine, requests, joins=[0, 0, 2, 5])
    assert not engine.has_work and engine.num_active == 0
    for i, p in enumerate(batch):
        assert_same(outputs[i], alone(model, method, params, p, **row_params(method, params, GENS[i])), p)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("method,params", [
    ("vanilla", dict(steps=GEN)), ("multi_block", dict(threshold=0.5, cache_delay_iter=1)),
    ("fast_dllm", dict(steps=GEN, cache="dual")), ("block_entropy", dict(steps=GEN)),
    ("vanilla", dict(steps=GEN, remasking="random")),
])
def test_seeded_rows_repeat_whatever_the_batch_around_them(trained_models, family, method, params):
    model = trained_models[family]
    if family == "dream" and params.get("remasking") == "random":
        params = dict(steps=GEN, alg="origin")  # Dream's random decoder: unmasking by chance
    batch = prompts(3, seed=2)
    engine = Engine(model, method, **shared(model, method, params))
    temps = [1.0, 0.0, 0.7]
    requests = [dict(prompt=p, seed=10 + i, temperature=t, **row_params(method, params, GEN))
                for i, (p, t) in enumerate(zip(batch, temps))]
    outputs, _ = run_staggered(engine, requests, joins=[0, 1, 1])
    for i, p in enumerate(batch):
        ref = generate(model, [p], method, seed=10 + i, temperature=temps[i], **params)
        assert_same(outputs[i], ref, p)


def test_per_row_thresholds_equal_each_row_alone(trained_models):
    model = trained_models["llada"]
    batch = prompts(3, seed=4)
    engine = Engine(model, "multi_block", block_size=BLOCK, cache_delay_iter=1, early_stop=True)
    taus = [0.05, 0.5, 3.0]
    outputs, _ = run_staggered(engine, [dict(prompt=p, threshold=t, max_new_tokens=GEN)
                                        for p, t in zip(batch, taus)], joins=[0, 0, 3])
    nfe = []
    for i, p in enumerate(batch):
        ref = generate(model, [p], "multi_block", threshold=taus[i], cache_delay_iter=1, early_stop=True)
        assert_same(outputs[i], ref, p)
        nfe.append(outputs[i].nfe)
    assert nfe[0] > nfe[2]  # the thresholds really differ


def test_events_stream_only_committed_text(trained_models):
    """The concatenated ``new_tokens`` of a row are its final tokens; each chunk was final when it was reported."""
    model = trained_models["llada"]
    batch = prompts(4, seed=8)
    engine = Engine(model, "multi_block", block_size=BLOCK, threshold=0.5, cache_delay_iter=1, early_stop=True)
    outputs, events = run_staggered(engine, [dict(prompt=p, max_new_tokens=GEN) for p in batch], joins=[0, 1, 2, 3])
    reasons = set()
    for i in range(len(batch)):
        evs, out = events[i], outputs[i]
        streamed = [t for ev in evs for t in ev.new_tokens]
        assert streamed == out.tokens
        lengths = [ev.prefix_length for ev in evs]
        assert lengths == sorted(lengths) and lengths[-1] == GEN
        assert evs[-1].finished and not any(ev.finished for ev in evs[:-1])
        steps = [ev.step for ev in evs if ev.step is not None]
        assert steps == list(range(out.nfe))
        committed = np.concatenate([ev.committed for ev in evs])
        assert sorted(committed.tolist()) == sorted(set(committed.tolist()))  # each position committed once
        for ev in evs:  # positions reported committed in a step have that step in the trajectory
            if ev.step is not None and ev.committed.size:
                assert (out.commit_step[ev.committed] == ev.step).all()
        reasons.add(out.finish_reason)
        assert out.finish_reason == ("stop" if len(out.tokens) < GEN else "length")
    assert "stop" in reasons


def test_cancel_and_finish_stop_costing_compute(trained_models):
    """A cancelled row leaves at the next step: it forwards nothing from then on, the others are unaffected."""
    model = trained_models["llada"]
    method, params = SETTINGS["multi_block_kv_d1"]
    batch = prompts(3, seed=12)
    engine = Engine(model, method, block_size=BLOCK, **params)
    ids = [engine.add_request(p, max_new_tokens=GEN) for p in batch]
    assert ids == [0, 1, 2]
    engine.step()
    assert set(engine.stats.last_positions) == {0, 1, 2}
    assert engine.cancel(1)
    events = engine.step()
    assert set(engine.stats.last_positions) == {0, 2}  # cancelled: no compute at the next step
    gone = [ev for ev in events if ev.request_id == 1]
    assert len(gone) == 1 and gone[0].finished and gone[0].finish_reason == "cancelled"
    assert gone[0].output.nfe == 1 and 1 not in engine.active_ids
    assert not engine.cancel(1)  # already gone
    outputs = {}
    while engine.has_work:
        before = set(engine.active_ids)
        for ev in engine.step():
            if ev.finished:
                outputs[ev.request_id] = ev.output
                assert ev.request_id not in engine.stats.last_positions  # finished in plan: no forward
        assert set(engine.stats.last_positions) <= before
    for i in (0, 2):
        assert_same(outputs[i], alone(model, method, dict(params, block_size=BLOCK), batch[i]), batch[i])
    # a waiting request cancelled before it ever ran
    engine.add_request(batch[0], request_id="late", max_new_tokens=GEN)
    engine.cancel("late")
    (ev,) = engine.step()
    assert ev.finished and ev.finish_reason == "cancelled" and ev.output.nfe == 0 and not engine.has_work


def test_positions_forwarded_follow_what_each_row_needs(trained_models):
    """The positions a batch forwards are the sum of what its rows forward alone (nothing for the union)."""
    model = trained_models["dream"]
    for method, params in (SETTINGS["multi_block_kv_d2_r3_es"], SETTINGS["fast_dllm_dual"],
                           SETTINGS["fast_dllm_prefix"]):
        batch = prompts(4, seed=30)
        engine = Engine(model, method, **shared(model, method, params))
        run_staggered(engine, [dict(prompt=p, **row_params(method, params, g)) for p, g in zip(batch, GENS)],
                      joins=[0, 1, 1, 4])
        total = 0
        for p, g in zip(batch, GENS):
            single = Engine(model, method, **shared(model, method, params))
            run_staggered(single, [dict(prompt=p, **row_params(method, params, g))], joins=[0])
            total += single.stats.positions
            assert single.stats.forwards == single.stats.steps
        assert engine.stats.positions == total
        assert engine.stats.steps < engine.stats.forwards


def test_max_batch_queues_the_rest(trained_models):
    model = trained_models["llada"]
    batch = prompts(5, seed=3)
    engine = Engine(model, "block_entropy", block_size=BLOCK, steps=GEN, max_new_tokens=GEN, max_batch=2)
    for p in batch:
        engine.add_request(p)
    seen = []
    outputs = {}
    while engine.has_work:
        for ev in engine.step():
            if ev.finished:
                outputs[ev.request_id] = ev.output
        seen.append(engine.num_active + engine.num_waiting)
        assert engine.num_active <= 2
    for i, p in enumerate(batch):
        assert_same(outputs[i], generate(model, [p], "block_entropy", steps=GEN), p)


@pytest.mark.parametrize("prompt,params,message", [
    ([], {}, r"prompt 9 is empty; every row needs at least one token"),
    ([1] * 1000, dict(max_new_tokens=64), r"prompt 9 has 1000 tokens; with max_new_tokens=64 that is 1064, more "
                                          r"than the model's maximum length 1024; shorten the prompt to at most 960 "
                                          r"tokens"),
    ([1, 2, 999], {}, r"prompt 9 holds token id 999 outside the vocabulary \[0, 128\)"),
    ([1, "a"], {}, r"prompt 9 must be a list of integer token ids"),
    ([1, 2], dict(treshold=0.5), r"unknown parameter 'treshold' for method 'multi_block' \(did you mean "
                                 r"'threshold'\?\)"),
    ([1, 2], dict(threshold=-0.1), r"multi_block: threshold=-0.1 is outside >= 0.0 \(an entropy threshold"),
    ([1, 2], dict(temperature=-1.0), r"multi_block: temperature=-1.0 is outside \[0.0, 100.0\]"),
    ([1, 2], dict(max_new_tokens=20), r"max_new_tokens=20 is not a multiple of block_size=8"),
    ([1, 2], dict(block_size=16), r"multi_block: parameter 'block_size' is shared by every row and cannot be set "
                                  r"per request"),
    ([1, 2], dict(cache_delay_iter=2), r"parameter 'cache_delay_iter' is shared by every row"),
    ([1, 2], dict(eos_token_id=500), r"eos_token_id=500 is not a token id of this model's vocabulary \[0, 128\)"),
    ([1, 2], dict(eos_token_id=127), r"eos_token_id and mask_id are both 127; they must differ"),
    ([1, 2], dict(seed="x"), r"seed must be an integer from 0 to 2\*\*64 - 1, got 'x'"),
    ([1, 2], dict(request_id=0), r"request id 0 is already in use"),
])
def test_a_bad_request_fails_alone(prompt, params, message):
    """Bad requests raise with generate's messages and never disturb the running rows."""
    model = d3llm.build_model("llada-tiny", seed=0)
    kw = dict(block_size=8, cache_delay_iter=1, threshold=0.5)
    engine = Engine(model, "multi_block", **kw)
    good = [[3, 4, 5, 6], [7, 8]]
    engine.add_request(good[0], max_new_tokens=16)
    engine.step()
    if "request_id" not in params:
        params = dict(params, request_id=9)
    with pytest.raises(GenerationError, match=message):
        engine.add_request(prompt, **params)
    engine.add_request(good[1], max_new_tokens=16)
    outputs, _ = run_staggered(engine, [], joins=[])
    assert engine.num_waiting == 0 and sorted(outputs) == [0, 1]
    for i, p in enumerate(good):
        ref = d3llm.generate(model, [p], "multi_block", max_new_tokens=16, **kw)
        assert outputs[i].generated.tolist() == ref.sequences[0, len(p):].tolist()
        assert outputs[i].nfe == int(ref.nfe[0])


def test_generate_messages_for_the_same_mistakes():
    """The same bad values give the same messages through generate (row index) and the engine (request id)."""
    model = d3llm.build_model("llada-tiny", seed=0)
    for kwargs, message in ((dict(threshold=-0.1), r"threshold=-0.1 is outside"),
                            (dict(treshold=1), r"unknown parameter 'treshold'")):
        with pytest.raises(GenerationError, match=message):
            d3llm.generate(model, [[1, 2]], "multi_block", **kwargs)
        with pytest.raises(GenerationError, match=message):
            Engine(model, "multi_block").add_request([1, 2], **kwargs)
    with pytest.raises(GenerationError, match=r"prompt 1 is empty"):
        d3llm.generate(model, [[1, 2], []], "multi_block", max_new_tokens=32, block_size=32)
    with pytest.raises(GenerationError, match=r"prompt 1 is empty"):
        Engine(model, "multi_block").add_request([], request_id=1)


@pytest.mark.parametrize("name", ["multi_block_kv_d2_r3_es", "fast_dllm_dual", "block_entropy"])
def test_a_token_budget_splits_the_batch_without_changing_a_row(trained_models, name):
    """``max_forward_tokens`` packs consecutive rows into several forwards per step: same tokens, NFE, positions."""
    model = trained_models["llada"]
    method, params = SETTINGS[name]
    batch = prompts(5, seed=40)
    results = []
    for budget in (None, 30):
        engine = Engine(model, method, max_forward_tokens=budget, **shared(model, method, params))
        outputs, _ = run_staggered(engine, [dict(prompt=p, **row_params(method, params, g))
                                            for p, g in zip(batch, GENS + [GEN])], joins=[0, 0, 0, 1, 3])
        results.append((outputs, engine.stats))
    assert engine._forward_groups(np.array([20, 9, 25, 40, 3])) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    (a, stats_a), (b, stats_b) = results
    for i in range(len(batch)):
        assert a[i].generated.tolist() == b[i].generated.tolist() and a[i].nfe == b[i].nfe
    assert stats_a.positions == stats_b.positions and stats_a.steps == stats_b.steps


@pytest.fixture(scope="module")
def ar_model():
    from d3llm.assets import ar_model_path

    return d3llm.load_model(ar_model_path()), d3llm.load_tokenizer(ar_model_path())


def test_autoregressive_rows_joining_mid_way_equal_each_row_alone(ar_model):
    """The causal baseline runs on the same engine: prompts of different lengths, different max_new_tokens, rows
    that join later and rows that sample with their own seeds decode exactly as they do alone."""
    model, tok = ar_model
    from d3llm.models.prompts import encode_prompt
    from d3llm.tasks.data import ArithDataset

    batch = [encode_prompt(tok, ex.question) for ex in ArithDataset("test", size=4, seed=3)]
    batch[1], batch[2] = batch[1][6:], batch[2][3:]  # prompts of different lengths (arith prompts have one length)
    gens, temps = [48, 9, 30, 48], [0.0, 0.0, 0.9, 0.0]
    engine = Engine(model, "autoregressive")
    outputs, _ = run_staggered(engine, [dict(prompt=p, max_new_tokens=g, temperature=t, seed=5 + i)
                                        for i, (p, g, t) in enumerate(zip(batch, gens, temps))], joins=[0, 0, 3, 7])
    finishes = set()
    for i, p in enumerate(batch):
        ref = d3llm.generate(model, [p], "autoregressive", max_new_tokens=gens[i], temperature=temps[i], seed=5 + i)
        assert_same(outputs[i], ref, p)
        finishes.add(outputs[i].finish_reason)
    assert finishes == {"stop", "length"}  # row 1 is cut by its 9 tokens, the greedy 48-token rows stop at EOS


# -- fault isolation (issue 19) ---------------------------------------------------------------------------------------
def inject_fault(monkeypatch, engine, phase, victim, at_step):
    """Make ``phase`` (plan, forward, commit or update) raise whenever the row of request ``victim`` takes part in
    it from its step ``at_step`` on; the other rows are untouched."""
    target, name = (engine.model, "forward_packed") if phase == "forward" else (engine.method, phase)
    original = getattr(target, name)

    def faulty(*args, **kwargs):
        ids = engine.active_ids
        if victim in ids and engine.rows.nfe[ids.index(victim)] >= at_step:
            raise RuntimeError(f"injected {phase} fault")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, faulty)


@pytest.mark.parametrize("family,name,phase", [
    ("llada", "multi_block_kv_d2_r3_es", "plan"), ("llada", "multi_block_kv_d2_r3_es", "forward"),
    ("llada", "multi_block_kv_d2_r3_es", "commit"), ("llada", "multi_block_kv_d2_r3_es", "update"),
    ("llada", "fast_dllm_dual", "commit"), ("dream", "dream_vanilla_entropy", "forward"),
])
def test_a_row_that_raises_mid_decode_fails_alone(monkeypatch, trained_models, family, name, phase):
    """A fault in one row fails that request only: the rows around it (sampled ones included) decode exactly the
    tokens they decode alone, and the engine goes on taking requests."""
    model = trained_models[family]
    method, params = SETTINGS[name]
    batch = prompts(4, seed=31)
    engine = Engine(model, method, isolate_faults=True, **shared(model, method, params))
    temps = [0.0, 0.9, 0.0, 0.0]
    requests = [dict(prompt=p, seed=5 + i, temperature=temps[i], **row_params(method, params, GEN))
                for i, p in enumerate(batch)]
    inject_fault(monkeypatch, engine, phase, victim=2, at_step=3)
    outputs, events = run_staggered(engine, requests, joins=[0, 0, 0, 1])
    failed = events[2][-1]
    assert failed.finished and failed.finish_reason == "error" and outputs[2].finish_reason == "error"
    assert isinstance(failed.error, RuntimeError) and str(failed.error) == f"injected {phase} fault"
    assert outputs[2].nfe == (2 if phase == "update" else 3)  # update runs once the row's NFE counts the step
    assert engine.stats.replays == 1
    for i in (0, 1, 3):
        ref = generate(model, [batch[i]], method, seed=5 + i, temperature=temps[i], **params)
        assert_same(outputs[i], ref, batch[i])
    assert not engine.has_work and engine.num_active == 0
    again, _ = run_staggered(engine, [dict(prompt=batch[0], **row_params(method, params, GEN))], joins=[0])
    assert_same(again[0], generate(model, [batch[0]], method, **params), batch[0])


def test_a_request_whose_set_up_raises_fails_alone(monkeypatch, trained_models):
    model = trained_models["llada"]
    engine = Engine(model, "multi_block", isolate_faults=True, block_size=BLOCK, cache_delay_iter=1)
    original = engine.method.init_state

    def faulty(canvas, rows):
        if any(r.params.threshold == 0.25 for r in rows):
            raise MemoryError("injected set-up fault")
        return original(canvas, rows)

    monkeypatch.setattr(engine.method, "init_state", faulty)
    batch = prompts(3, seed=8)
    taus = [0.5, 0.25, 0.5]
    outputs, events = run_staggered(engine, [dict(prompt=p, threshold=t, max_new_tokens=GEN)
                                             for p, t in zip(batch, taus)], joins=[0, 0, 0])
    assert outputs[1].finish_reason == "error" and isinstance(events[1][-1].error, MemoryError)
    assert outputs[1].nfe == 0 and events[1] == [events[1][-1]]
    for i in (0, 2):
        assert_same(outputs[i], generate(model, [batch[i]], "multi_block", cache_delay_iter=1), batch[i])


def test_without_isolation_a_fault_propagates_out_of_step(monkeypatch, trained_models):
    model = trained_models["llada"]
    engine = Engine(model, "multi_block", block_size=BLOCK, max_new_tokens=GEN)
    inject_fault(monkeypatch, engine, "commit", victim=0, at_step=0)
    engine.add_request(prompts(1, seed=1)[0], request_id=0)
    with pytest.raises(RuntimeError, match="injected commit fault"):
        engine.step()


def test_a_fresh_engine_has_the_same_settings(trained_models):
    model = trained_models["llada"]
    engine = Engine(model, "multi_block", isolate_faults=True, max_batch=3, block_size=BLOCK, threshold=0.3)
    copy = engine.fresh()
    assert copy is not engine and copy.model is model and copy.max_batch == 3 and copy.isolate_faults
    assert copy.params.as_dict() == engine.params.as_dict() and not copy.has_work
