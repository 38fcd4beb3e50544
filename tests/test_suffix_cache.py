"""multi_block's suffix cache: a forward ends with the block of its last candidate and attends to the cached keys and
values of the masked tail after it. Batch == single and rows joining mid-way run in test_decoding.py and
test_engine.py (the ``multi_block_suffix*`` settings); here: exactness of the bookkeeping, the compute it saves,
the counters, and every bad parameter."""

import pytest

import d3llm
from d3llm import Engine, GenerationError
from decoding_models import BLOCK, GEN, prompts
from test_decoding import MB, generate

CACHED = dict(MB, cache_delay_iter=2, refresh_interval=3, early_stop=True)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("early_stop,waiting", [(False, True), (True, True), (False, False)])
def test_tail_recomputed_every_step_equals_the_cached_decoder(trained_models, family, early_stop, waiting):
    """suffix_refresh_interval=1: every forward runs to the end, so tokens, trajectories, NFE and positions are the
    cached decoder's exactly (the suffix bookkeeping changes nothing else), with either waiting rule."""
    model = trained_models[family]
    batch = prompts(6, seed=5)
    params = dict(CACHED, early_stop=early_stop, refresh_while_waiting=waiting, max_new_tokens=GEN * 2)
    ref = generate(model, batch, "multi_block", **params)
    out = generate(model, batch, "multi_block", suffix_cache=True, suffix_refresh_interval=1, **params)
    assert out.sequences.tolist() == ref.sequences.tolist()
    assert out.commit_step.tolist() == ref.commit_step.tolist()
    assert out.nfe.tolist() == ref.nfe.tolist()
    assert out.positions.tolist() == ref.positions.tolist()


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_stale_tail_forwards_fewer_positions(trained_models, family):
    """Without tail refreshes every forward after the first ends at the active blocks: fewer positions than the
    cached decoder, counted per row in the result and in the engine's counter alike."""
    model = trained_models[family]
    batch = prompts(6, seed=7)
    params = dict(CACHED, max_new_tokens=GEN * 2)
    ref = generate(model, batch, "multi_block", **params)
    engine = Engine(model, "multi_block", suffix_cache=True, suffix_refresh_interval=None, block_size=BLOCK, **params)
    for i, p in enumerate(batch):
        engine.add_request(p, request_id=i)
    outputs = {}
    while engine.has_work:
        outputs.update({e.request_id: e.output for e in engine.step() if e.finished})
    positions = [outputs[i].positions for i in range(len(batch))]
    assert sum(positions) == engine.stats.positions
    assert all(p < int(r) for p, r in zip(positions, ref.positions))
    assert ref.positions_per_token > 0


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_no_refresh_while_waiting_starts_forwards_at_the_cached_prefix(trained_models, family):
    """refresh_while_waiting=False: a block waiting for the cache no longer makes the forward a full refresh, so the
    cached decoder forwards fewer positions; with refresh_interval=1 every iteration is a refresh anyway and nothing
    changes."""
    model = trained_models[family]
    batch = prompts(6, seed=11)
    params = dict(CACHED, early_stop=False, refresh_interval=None, max_new_tokens=GEN * 2)
    ref = generate(model, batch, "multi_block", **params)
    out = generate(model, batch, "multi_block", refresh_while_waiting=False, **params)
    assert int(out.positions.sum()) < int(ref.positions.sum())
    every = dict(params, refresh_interval=1)
    a = generate(model, batch, "multi_block", **every)
    b = generate(model, batch, "multi_block", refresh_while_waiting=False, **every)
    assert a.sequences.tolist() == b.sequences.tolist() and a.positions.tolist() == b.positions.tolist()


def test_positions_count_what_each_forward_processes(trained_models):
    """Without a cache every forward processes the whole row: positions = NFE x (prompt + canvas)."""
    model = trained_models["llada"]
    batch = prompts(3, seed=9)
    out = generate(model, batch, "multi_block", **MB)
    for i, p in enumerate(batch):
        assert int(out.positions[i]) == int(out.nfe[i]) * (len(p) + GEN)
    assert out.positions_per_token == pytest.approx(float(out.positions.sum()) / float(out.num_tokens.sum()))


def test_the_shipped_teacher_keeps_its_answers_with_a_suffix_cache():
    """At 128 new tokens the shipped teacher's answers to held-out problems stay correct with a stale tail, for
    fewer positions per token."""
    from d3llm.models.prompts import encode_prompt
    from d3llm.tasks.data import ArithDataset
    from d3llm.tasks.scoring import is_correct

    model, tokenizer = d3llm.load_model("teacher"), d3llm.load_tokenizer("teacher")
    data = ArithDataset("test", 12)
    ids = [encode_prompt(tokenizer, data[i].question) for i in range(len(data))]
    results = [d3llm.generate(model, ids, max_new_tokens=128, suffix_cache=flag) for flag in (False, True)]
    for result in results:
        texts = result.texts(tokenizer)
        assert sum(is_correct(t, data[i].gold) for i, t in enumerate(texts)) >= len(data) - 1
    assert results[1].positions_per_token < 0.85 * results[0].positions_per_token


@pytest.mark.parametrize("params,message", [
    (dict(suffix_cache=True), "suffix_cache=True needs the delayed KV cache: set cache_delay_iter"),
    (dict(suffix_cache=True, cache_delay_iter=1, reference_exact=True), "suffix_cache and reference_exact do not"),
    (dict(suffix_cache=True, cache_delay_iter=1, suffix_refresh_interval=0), "suffix_refresh_interval must be an "
                                                                             "integer from 1"),
    (dict(suffix_cache="yes", cache_delay_iter=1), "suffix_cache must be True or False, got 'yes'"),
    (dict(refresh_while_waiting="no", cache_delay_iter=1), "refresh_while_waiting must be True or False, got 'no'"),
    (dict(refresh_while_waiting=False, cache_delay_iter=1, reference_exact=True),
     "refresh_while_waiting=False and reference_exact do not combine"),
    (dict(suffix_cache=True, cache_delay_iter=1, suffix_refresh_interval=2.5), "suffix_refresh_interval must be an "
                                                                               "integer"),
])
def test_bad_suffix_parameters_are_clear_errors(trained_models, params, message):
    with pytest.raises(GenerationError, match=message.replace("(", r"\(")):
        d3llm.generate(trained_models["llada"], prompts(1, seed=1), "multi_block", max_new_tokens=GEN, **params)


def test_the_folder_default_and_the_command_line_flag(tmp_path, capsys):
    """A generation_config.json may turn the suffix cache on; --suffix-cache / --no-suffix-cache override it."""
    import json
    import shutil

    from d3llm.assets import resolve_model
    from d3llm.cli.main import main

    folder = tmp_path / "teacher"
    shutil.copytree(resolve_model("teacher"), folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "suffix_cache": True}))
    question = ("Mia has 58 cards. Then Mia sells 44 cards to her friend Joe. Then Mia wins 16 cards from her friend "
                "Joe. Then Mia walks for a bit with her friend Joe. Then Mia walks for a bit with her friend Joe. How "
                "many cards does Mia have now?")  # the README's question
    figures = {}
    for flag in ("--suffix-cache", "--no-suffix-cache", None, "--no-refresh-while-waiting"):
        argv = ["generate", "--model", str(folder), "--chat", "--json", "--max-new-tokens", "128", question]
        assert main(argv + ([flag] if flag else [])) == 0
        out = json.loads(capsys.readouterr().out)
        figures[flag] = out
        assert out["params"]["suffix_cache"] is (flag != "--no-suffix-cache")
        assert out["params"]["refresh_while_waiting"] is (flag != "--no-refresh-while-waiting")
    assert figures["--suffix-cache"]["positions_per_token"] == figures[None]["positions_per_token"]
    assert figures["--no-suffix-cache"]["positions_per_token"] > figures[None]["positions_per_token"]
    assert figures[None]["texts"] == figures["--no-suffix-cache"]["texts"]
    assert figures[None]["texts"][0].endswith("#### 30")


def test_evaluation_reports_positions_per_token():
    """d3llm eval's summary counts the positions its batches forwarded, as generate does for the same problems."""
    from d3llm.eval import evaluate
    from d3llm.models.prompts import encode_prompt
    from d3llm.tasks.data import ArithDataset

    model, tokenizer = d3llm.load_model("teacher"), d3llm.load_tokenizer("teacher")
    data = ArithDataset("test", 8)
    summary = evaluate(model, tokenizer, data, batch_size=4, warmup=False).summary()
    direct = [d3llm.generate(model, [encode_prompt(tokenizer, data[i].question) for i in range(s, s + 4)])
              for s in (0, 4)]
    positions = sum(int(r.positions.sum()) for r in direct)
    tokens = sum(int(r.num_tokens.sum()) for r in direct)
    assert summary["positions_per_token"] == round(positions / tokens, 2) > 0
