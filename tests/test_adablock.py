"""AdaBlock: delimiter-ended blocks chosen per row at run time, on Fast-dLLM's threshold rule and caches."""

import pytest
import torch

import d3llm
from d3llm.decoding.engine import Engine
from d3llm.decoding.methods.adablock import delimiter_ids_from
from decoding_models import BLOCK, GEN, MASK, VOCAB, prompts

EVERY_TOKEN = [t for t in range(VOCAB) if t != MASK]


def test_never_adapting_is_uncached_fast_dllm(trained_models):
    model = trained_models["llada"]
    batch = prompts(4, seed=3)
    fast = d3llm.generate(model, batch, "fast_dllm", max_new_tokens=GEN, block_size=BLOCK, cache="none",
                          threshold=0.7)
    ada = d3llm.generate(model, batch, "adablock", max_new_tokens=GEN, block_size=BLOCK, cache="none",
                         threshold=0.7, delimiter_ids=[1], delimiter_threshold=2.0)
    assert torch.equal(fast.sequences, ada.sequences) and torch.equal(fast.nfe, ada.nfe)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_a_block_ends_just_after_its_most_confident_delimiter(trained_models, cache):
    """Every token a delimiter, threshold 0: the first block ends after the most confident position of the
    look-ahead window of the first forward (computed here from a plain forward); the step commits only inside it."""
    model = trained_models["llada"]
    batch = prompts(3, seed=4)
    engine = Engine(model, "adablock", max_new_tokens=GEN, block_size=BLOCK, cache=cache, threshold=0.9,
                    delimiter_ids=EVERY_TOKEN, delimiter_threshold=0.0)
    for p in batch:
        engine.add_request(p)
    events = engine.step()
    window = int(0.25 * GEN)
    for i, p in enumerate(batch):
        logits = model(torch.tensor([p + [MASK] * GEN])).logits[0, len(p):len(p) + window].double()
        logits[:, MASK] = -torch.inf
        best = int(logits.softmax(-1).max(-1).values.argmax())
        assert engine.state.end[i] - engine.canvas.gen_start[i] == best + 1, i
        assert (events[i].committed <= best).all()


def test_rows_keep_their_own_blocks_and_the_batch_equals_each_row_alone(trained_models):
    model = trained_models["llada"]
    batch = prompts(5, seed=11)
    kw = dict(max_new_tokens=GEN, block_size=BLOCK, cache="dual", threshold=0.8, delimiter_ids=EVERY_TOKEN[:6],
              delimiter_threshold=0.2)
    together = d3llm.generate(model, batch, "adablock", **kw)
    for i, p in enumerate(batch):
        alone = d3llm.generate(model, [p], "adablock", **kw)
        assert together.tokens[i] == alone.tokens[0] and together.nfe[i] == alone.nfe[0]


def test_delimiters_come_from_the_tokenizer_and_are_required():
    tok = d3llm.load_tokenizer("teacher")
    assert delimiter_ids_from(tok) == tuple(tok.encode("\n", add_special_tokens=False))
    with pytest.raises(d3llm.GenerationError, match="no delimiter among"):
        delimiter_ids_from(tok, ("a long text of many tokens",))
    model = d3llm.build_model("llada-tiny", seed=0)
    with pytest.raises(d3llm.GenerationError, match="adablock: delimiter_ids is not set: give the token ids"):
        d3llm.generate(model, [[1, 2]], "adablock", max_new_tokens=8, block_size=8)
    with pytest.raises(d3llm.GenerationError, match="adablock: delimiter_ids must be a non-empty list of token ids"):
        d3llm.generate(model, [[1, 2]], "adablock", max_new_tokens=8, block_size=8, delimiter_ids=["x"])
    with pytest.raises(d3llm.GenerationError, match=r"adablock: delimiter_threshold=-1.0 is outside >= 0.0"):
        d3llm.generate(model, [[1, 2]], "adablock", max_new_tokens=8, block_size=8, delimiter_ids=[3],
                       delimiter_threshold=-1.0)
    dream = d3llm.build_model("dream-tiny", seed=0)
    with pytest.raises(d3llm.GenerationError, match="adablock: only LLaDA is supported"):
        d3llm.generate(dream, [[1, 2]], "adablock", max_new_tokens=8, block_size=8, delimiter_ids=[3])


def test_eval_takes_the_tokenizer_newline(capsys):
    from d3llm.cli.main import main

    assert main(["eval", "--method", "adablock", "--block-size", "16", "--limit", "4", "--batch-size", "4",
                 "--no-progress", "--threads", "1"]) == 0
    assert "adablock" in capsys.readouterr().out
