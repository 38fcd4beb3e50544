"""Early exit (Prophet, SchED) on any diffusion method: the rule, the fill, and the compute it costs."""

import numpy as np
import pytest
import torch

import d3llm
from d3llm.decoding.early_exit import ExitRule
from d3llm.decoding.engine import Engine
from decoding_models import BLOCK, GEN, prompts

MB = dict(threshold=0.5, block_add_threshold=0.1, decoded_token_threshold=0.95)
METHODS = [("vanilla", dict(steps=GEN)), ("fast_dllm", dict(steps=GEN, cache="dual")),
           ("fast_dllm", dict(steps=GEN, cache="prefix")), ("multi_block", dict(MB, cache_delay_iter=1)),
           ("eb_sampler", dict(steps=GEN, threshold=0.1))]


def generate(model, batch, method, **params):
    if not (model.family == "dream" and method == "vanilla"):  # Dream's vanilla decoder has a single block
        params.setdefault("block_size", BLOCK)
    return d3llm.generate(model, batch, method, max_new_tokens=GEN, **params)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("method,params", METHODS)
def test_an_exit_that_never_fires_changes_nothing(trained_models, family, method, params):
    model = trained_models[family]
    batch = prompts(4, seed=6)
    plain = generate(model, batch, method, **params)
    never = generate(model, batch, method, **params, early_exit="sched", exit_high=1e9, exit_low=1e9)
    assert torch.equal(plain.sequences, never.sequences) and torch.equal(plain.nfe, never.nfe)
    assert torch.equal(plain.positions, never.positions)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_an_exit_at_once_fills_every_mask_with_the_first_forwards_argmax(trained_models, family):
    """Threshold 0 fires at the first forward: every row takes one forward, and its generation is the argmax of
    that forward (the one token vanilla commits included). Plain thresholding would keep decoding."""
    model = trained_models[family]
    batch = prompts(3, seed=8)
    out = generate(model, batch, "block_entropy", steps=GEN, threshold=0.0, early_exit="sched", exit_high=0.0,
                   exit_low=0.0)
    assert out.nfe.tolist() == [1, 1, 1]
    mask = model.config.mask_token_id
    for i, p in enumerate(batch):
        x = torch.tensor([p + [mask] * GEN])
        logits = model(x).logits[0, len(p):].float()
        logits[:, mask] = -torch.inf
        assert out.sequences[i, out.gen_start:].tolist() == logits.argmax(-1).tolist()
    slow = generate(model, batch, "block_entropy", steps=GEN, threshold=0.0)
    assert int(slow.nfe.sum()) > 3


def test_schedules_step_down_with_progress():
    rule = ExitRule("prophet", "step", 7.5, 2.5, None, 5, False)
    assert rule.threshold(np.array([0.0, 0.32, 0.34, 0.66, 0.67, 1.0])).tolist() == [7.5, 7.5, 5.0, 5.0, 2.5, 2.5]
    for schedule in ("linear", "cosine"):
        rule = ExitRule("sched", schedule, 7.5, 2.5, None, 5, False)
        values = rule.threshold(np.linspace(0, 1, 11))
        assert values[0] == pytest.approx(7.5) and values[-1] == pytest.approx(2.5)
        assert np.all(np.diff(values) < 0)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_cached_exit_pays_one_full_forward_for_stale_masks(trained_models, family, monkeypatch):
    """Under the dual cache a step forwards one block: a row that exits with masks after it takes one extra
    uncached forward of its whole sequence, counted in its NFE and positions; without a cache it never does."""
    model = trained_models[family]
    calls = []
    real = Engine._full_forward_argmax

    def spy(self, rows, positions):
        calls.append([self.rows.requests[i].request_id for i in rows.tolist()])
        return real(self, rows, positions)

    monkeypatch.setattr(Engine, "_full_forward_argmax", spy)
    # the step schedule fires only past 2/3 of the generation, when the last block is still masked
    exit_params = dict(early_exit="prophet", exit_high=1e9, exit_low=0.0)
    outs = {}
    for cache in ("dual", "none"):
        calls.clear()
        engine = Engine(model, "fast_dllm", max_new_tokens=GEN, block_size=BLOCK, steps=GEN, cache=cache,
                        threshold=0.99, **exit_params)
        ids = [engine.add_request(p) for p in prompts(4, seed=12)]
        done = {}
        while engine.has_work:
            for event in engine.step():
                if event.finished:
                    done[event.request_id] = event.output
        outs[cache] = (done, [i for c in calls for i in c], engine.stats)
        assert sorted(done) == ids
    done, extra, stats = outs["dual"]
    assert extra, "the dual cache left masks outside the exiting step's block"
    assert stats.forwards == sum(o.nfe for o in done.values())
    assert stats.positions == sum(o.positions for o in done.values())
    for rid, out in done.items():
        # every forward counts; the masks the extra forward filled are committed at its index
        assert out.nfe == int(out.commit_step.max()) + 1, rid
        assert (out.generated != model.config.mask_token_id).all()
        if rid in extra:  # the step before the extra forward committed too (the method's rule, then the exit)
            assert (out.commit_step == out.nfe - 2).any() or out.nfe == 1, rid
    assert outs["none"][1] == []


def test_an_autoregressive_decoder_has_no_canvas_to_fill():
    model = d3llm.build_model("llama-tiny", seed=3)
    with pytest.raises(d3llm.GenerationError, match="autoregressive: early_exit fills a diffusion canvas"):
        d3llm.generate(model, [[1, 2, 3]], "autoregressive", max_new_tokens=4, early_exit="sched")
