"""Bad decoding parameters fail at call time with a clear message, before any forward."""

import pytest
import torch

import d3llm
from d3llm import GenerationError


@pytest.fixture(scope="module")
def model():
    return d3llm.build_model("llada-tiny", seed=0)


PROMPT = [[1, 2, 3]]


@pytest.mark.parametrize("method,params,message", [
    ("multi_block", dict(threshold=-0.1), r"multi_block: threshold=-0.1 is outside >= 0.0 \(an entropy threshold"),
    ("block_entropy", dict(threshold=-1, max_new_tokens=32, block_size=32, steps=32),
     r"block_entropy: threshold=-1 is outside >= 0.0"),
    ("eb_sampler", dict(threshold=-0.01, max_new_tokens=32, block_size=32),
     r"eb_sampler: threshold=-0.01 is outside >= 0.0 \(an entropy budget in nats\)"),
    ("eb_sampler", dict(threshold=float("inf"), max_new_tokens=32, block_size=32),
     r"eb_sampler: threshold must be a finite number, got inf"),
    ("fast_dllm", dict(threshold=1.5, max_new_tokens=32, block_size=32, steps=32),
     r"fast_dllm: threshold=1.5 is outside \[0.0, 1.0\] \(a confidence threshold\)"),
    ("multi_block", dict(block_add_threshold=1.2), r"block_add_threshold=1.2 is outside \[0.0, 1.0\]"),
    ("multi_block", dict(commit_rule="eb"), r"multi_block: commit_rule='eb' is not one of 'entropy', 'budget'"),
    ("multi_block", dict(commit_rule="budget", threshold=-1.0),
     r"multi_block: threshold=-1.0 is outside >= 0.0 \(an entropy budget in nats\)"),
    ("multi_block", dict(commit_rule="budget", remasking="random"),
     r"multi_block: commit_rule='budget' spends an entropy budget; remasking='random' ranks by random scores"),
    ("fast_dllm_factor", dict(factor=-1.0, max_new_tokens=32, block_size=32),
     r"fast_dllm_factor: factor=-1.0 is outside >= 0.0 \(the factor f of \(k \+ 1\)\(1 - c_k\) <= f"),
    ("fast_dllm_factor", dict(threshold=0.9, max_new_tokens=32, block_size=32),
     r"unknown parameter 'threshold' for method 'fast_dllm_factor'"),
    ("hierarchy", dict(threshold=None, max_new_tokens=32, block_size=32),
     r"hierarchy: threshold must be a confidence threshold in \[0, 1\], got None \(threshold=None, LLaDA's quota "
     r"schedule, is fast_dllm's\)"),
    ("hierarchy", dict(low_threshold=1.5, max_new_tokens=32, block_size=32),
     r"hierarchy: low_threshold=1.5 is outside \[0.0, 1.0\] \(the confidence a masked run's best candidate needs\)"),
    ("local_leap", dict(radius=0, max_new_tokens=32, block_size=32),
     r"local_leap: radius must be an integer from 1 to block_size=32, got 0"),
    ("local_leap", dict(relaxed_threshold=float("nan"), max_new_tokens=32, block_size=32),
     r"local_leap: relaxed_threshold must be a finite number, got nan"),
    ("credit", dict(decay_beta=1.5, max_new_tokens=32, block_size=32),
     r"credit: decay_beta=1.5 is outside \[0.0, 1.0\] \(the credit kept from one step to the next\)"),
    ("credit", dict(credit_alpha=-0.1, max_new_tokens=32, block_size=32), r"credit: credit_alpha=-0.1 is outside >= 0.0"),
    ("credit", dict(boost_gamma="big", max_new_tokens=32, block_size=32), r"credit: boost_gamma must be a number"),
    ("klass", dict(kl_threshold=-1e-3, max_new_tokens=64), r"klass: kl_threshold=-0.001 is outside >= 0.0 \(a KL"),
    ("klass", dict(kl_history=0, max_new_tokens=64),
     r"klass: kl_history must be an integer from 1 to max_new_tokens=64, got 0"),
    ("klass", dict(max_new_tokens=32), r"klass: max_new_tokens=32 is not a multiple of block_size=64 \(built-in default\)"),
    ("klass", dict(max_new_tokens=64, remasking="random"), r"klass: remasking='random' is not one of 'low_confidence'"),
    ("multi_block", dict(decoded_token_threshold=-0.5), r"decoded_token_threshold=-0.5 is outside \[0.0, 1.0\]"),
    ("multi_block", dict(threshold="high"), r"multi_block: threshold must be a number, got 'high'"),
    ("multi_block", dict(threshold=float("nan")), r"multi_block: threshold must be a finite number, got nan"),
    ("multi_block", dict(block_size=0), r"multi_block: block_size must be an integer from 1 to 2,147,483,647, got 0"),
    ("vanilla", dict(block_size=-8), r"vanilla: block_size must be an integer from 1 to 2,147,483,647, got -8"),
    ("multi_block", dict(max_new_tokens=100, block_size=32),
     r"max_new_tokens=100 is not a multiple of block_size=32; multi_block decodes whole blocks \(use e.g. "
     r"max_new_tokens=128, or another block_size\)"),
    ("multi_block", dict(max_new_tokens=100),
     r"max_new_tokens=100 is not a multiple of block_size=32 \(built-in default\)"),
    ("vanilla", dict(max_new_tokens=48, block_size=32, steps=48), r"vanilla: max_new_tokens=48 is not a multiple"),
    ("vanilla", dict(max_new_tokens=64, block_size=32, steps=63),
     r"vanilla: steps=63 must be a multiple of the number of blocks, max_new_tokens=64 / block_size=32 = 2 "
     r"\(e.g. steps=62, or omit steps for one token per forward\)"),
    ("vanilla", dict(max_new_tokens=64, block_size=32, steps=0),
     r"vanilla: steps must be an integer from 1 to max_new_tokens=64 \(every step commits at least one token\), got 0"),
    ("vanilla", dict(temperature=-1.0), r"vanilla: temperature=-1.0 is outside \[0.0, 100.0\]"),
    ("vanilla", dict(remasking="lowest"), r"vanilla: remasking='lowest' is not one of 'low_confidence', 'random'"),
    ("fast_dllm", dict(cache="full", max_new_tokens=32, block_size=32, steps=32),
     r"fast_dllm: cache='full' is not one of 'none', 'prefix', 'dual'"),
    ("multi_block", dict(cache_delay_iter=0), r"multi_block: cache_delay_iter must be an integer from 1 to 2,147,483,647, got 0"),
    ("multi_block", dict(refresh_interval=2.5), r"multi_block: refresh_interval must be an integer from 1 to 2,147,483,647, got 2.5"),
    ("multi_block", dict(early_stop="yes"), r"multi_block: early_stop must be True or False, got 'yes'"),
    ("multi_block", dict(early_exit="soon"), r"multi_block: early_exit='soon' is not one of 'prophet', 'sched', None"),
    ("fast_dllm", dict(early_exit="prophet", exit_schedule="cosine", max_new_tokens=32, block_size=32),
     r"fast_dllm: exit_schedule='cosine' is not one of 'step'"),
    ("multi_block", dict(exit_high=3.0), r"multi_block: exit_high set without early_exit; pass early_exit="),
    ("multi_block", dict(early_exit="sched", exit_low=9.0),
     r"multi_block: exit_low=9.0 is outside \[0.0, 7.5\] \(a logit gap at most exit_high\)"),
    ("multi_block", dict(early_exit="sched", exit_answer_start=3),
     r"multi_block: exit_answer_start is Prophet's answer region; early_exit='sched' monitors every mask"),
    ("vanilla", dict(early_exit="prophet", exit_answer_start=64, max_new_tokens=64, block_size=32),
     r"vanilla: exit_answer_start must be an integer from 0 to max_new_tokens - 1 = 63, got 64"),
    ("multi_block", dict(treshold=0.5), r"unknown parameter 'treshold' for method 'multi_block' \(did you mean "
                                        r"'threshold'\?\)"),
    ("vanilla", dict(cache="dual"), r"unknown parameter 'cache' for method 'vanilla'"),
    ("vanilla", dict(gen_length=64, max_new_tokens=64),
     r"parameter 'max_new_tokens' given twice for method 'vanilla': as 'gen_length' and as 'max_new_tokens'"),
    ("multi_block", dict(block_size=16, block_length=16),
     r"parameter 'block_size' given twice for method 'multi_block': as 'block_size' and as 'block_length'"),
])
def test_bad_parameters(model, method, params, message):
    with pytest.raises(GenerationError, match=message):
        d3llm.generate(model, PROMPT, method, **params)


def test_unknown_method(model):
    with pytest.raises(GenerationError, match=r"unknown method 'multiblock' \(did you mean 'multi_block'\?\); "
                                              r"expected one of vanilla, block_entropy, fast_dllm, multi_block"):
        d3llm.generate(model, PROMPT, "multiblock")


def test_prompt_plus_generation_beyond_the_maximum_length_names_the_prompt(model):
    with pytest.raises(GenerationError, match=r"prompt 1 has 1000 tokens; with max_new_tokens=64 that is 1064, more "
                                              r"than the model's maximum length 1024 \(and 1 more prompt\(s\)\); "
                                              r"shorten the prompt to at most 960 tokens"):
        d3llm.generate(model, [[1] * 5, [1] * 1000, [2] * 970], "multi_block", max_new_tokens=64, block_size=32)


@pytest.mark.parametrize("bad,message", [
    ([[1, 2], []], r"prompt 1 is empty; every row needs at least one token"),
    ([], r"input_ids holds no prompt"),
    (torch.zeros(2, 0, dtype=torch.long), r"prompt 0 is empty"),
    (torch.zeros(1, 3), r"input_ids must hold integer token ids, got dtype torch.float32"),
    ([[1, 2, 999]], r"prompt 0 holds token id 999 outside the vocabulary \[0, 128\)"),
    ([[1, "a"]], r"prompt 0 must be a list of integer token ids"),
    ("hello", r"input_ids must be a LongTensor \[batch, length\] or a list of token-id lists, got str"),
])
def test_bad_prompts(model, bad, message):
    with pytest.raises(GenerationError, match=message):
        d3llm.generate(model, bad, "multi_block", max_new_tokens=32, block_size=32)


def test_bad_special_ids(model):
    with pytest.raises(GenerationError, match=r"mask_id=500 is not a token id of this model's vocabulary \[0, 128\)"):
        d3llm.generate(model, PROMPT, "multi_block", mask_id=500)
    with pytest.raises(GenerationError, match=r"eos_token_id and mask_id are both 127; they must differ"):
        d3llm.generate(model, PROMPT, "multi_block", eos_token_id=127)
    no_mask = d3llm.build_model(d3llm.named_config("llada-tiny").replace(mask_token_id=None))
    with pytest.raises(GenerationError, match=r"the model config has no mask_token_id; pass mask_id=\.\.\."):
        d3llm.generate(no_mask, PROMPT, "multi_block", max_new_tokens=32)


def test_attention_mask_shape_mismatch(model):
    with pytest.raises(GenerationError, match=r"attention_mask shape \(1, 2\) differs from input_ids \(1, 3\)"):
        d3llm.generate(model, torch.tensor(PROMPT), "multi_block", attention_mask=torch.ones(1, 2))


@pytest.fixture(scope="module")
def dream():
    return d3llm.build_model("dream-tiny", seed=0)


@pytest.mark.parametrize("method,params,message", [
    ("vanilla", dict(max_new_tokens=32, block_size=8),
     r"vanilla: block_size=8 is not supported on Dream, whose vanilla decoder treats the whole generation \(32 "
     r"tokens\) as one block; omit block_size"),
    ("vanilla", dict(max_new_tokens=32, alg="greedy"),
     r"vanilla: alg='greedy' is not one of 'origin', 'maskgit_plus', 'topk_margin', 'entropy'"),
    ("vanilla", dict(max_new_tokens=32, top_p=1.5), r"vanilla: top_p=1.5 is outside \[0.0, 1.0\]"),
    ("block_entropy", dict(max_new_tokens=32, block_size=32, steps=32, remasking="random"),
     r"block_entropy: remasking='random' is a LLaDA option"),
    ("klass", dict(max_new_tokens=64), r"klass: only LLaDA is supported \(Dream's KLASS"),
    ("fast_dllm", dict(max_new_tokens=32, block_size=32, steps=32, threshold=None),
     r"fast_dllm: Dream needs a confidence threshold"),
])
def test_bad_parameters_for_dream(dream, method, params, message):
    with pytest.raises(GenerationError, match=message):
        d3llm.generate(dream, PROMPT, method, **params)


# -- bounded inputs: the values a fuzzing pass used to crash the server's engine with (issue 19) ----------------------
HUGE = 10**400  # an integer beyond any float


@pytest.mark.parametrize("method,params,message", [
    ("multi_block", dict(threshold=HUGE), r"multi_block: threshold must be a finite number, got an integer of 401 "
                                          r"digits"),
    ("multi_block", dict(threshold=float("inf")), r"multi_block: threshold must be a finite number, got inf"),
    ("multi_block", dict(temperature=HUGE), r"multi_block: temperature must be a finite number"),
    ("multi_block", dict(temperature=1e-30), r"multi_block: temperature=1e-30 is too small: a temperature is 0 "
                                             r"\(greedy\) or from 1e-05 to 100.0"),
    ("multi_block", dict(temperature=1000.0), r"temperature=1000.0 is outside \[0.0, 100.0\]"),
    ("fast_dllm", dict(max_new_tokens=32, block_size=32, steps=2**63),
     r"fast_dllm: steps must be an integer from 1 to max_new_tokens=32 \(every step commits at least one token\), "
     r"got 9223372036854775808"),
    ("vanilla", dict(max_new_tokens=32, block_size=32, steps=10**9), r"vanilla: steps must be an integer from 1 to "
                                                                      r"max_new_tokens=32"),
    ("block_entropy", dict(max_new_tokens=32, block_size=32, steps=10**9), r"block_entropy: steps must be an "
                                                                            r"integer from 1 to max_new_tokens=32"),
    ("multi_block", dict(max_new_tokens=2**70, block_size=32), r"max_new_tokens must be an integer from 1 to "
                                                               r"2,147,483,647, got 1180591620717411303424"),
    ("multi_block", dict(cache_delay_iter=HUGE), r"cache_delay_iter must be an integer from 1 to 2,147,483,647, got "
                                                 r"an integer of 401 digits"),
    ("multi_block", dict(steps=5), r"unknown parameter 'steps' for method 'multi_block'; valid parameters: "
                                   r"max_new_tokens, block_size"),
])
def test_out_of_range_values_are_refused_before_any_work(model, method, params, message):
    """Each value is refused at call time (no schedule sized by ``steps`` is ever allocated: a billion steps used
    to cost 17 GB and 40 s before the first forward)."""
    with pytest.raises(GenerationError, match=message):
        d3llm.generate(model, PROMPT, method, **params)


@pytest.mark.parametrize("seed", [2**64, -1, -2**63 - 1, 10**400, 1.5, True])
def test_seeds_outside_64_bits_are_refused(model, seed):
    with pytest.raises(GenerationError, match=r"seed must be an integer from 0 to 2\*\*64 - 1, got"):
        d3llm.generate(model, PROMPT, "multi_block", seed=seed, max_new_tokens=32)


def test_the_largest_seed_and_steps_still_decode(model):
    out = d3llm.generate(model, PROMPT, "multi_block", seed=2**64 - 1, temperature=1.0, max_new_tokens=32)
    assert out.sequences.shape[1] == 3 + 32
    out = d3llm.generate(model, PROMPT, "vanilla", max_new_tokens=32, block_size=32, steps=32)
    assert int(out.nfe[0]) == 32


def test_dream_step_schedule_is_bounded_too(dream):
    with pytest.raises(GenerationError, match=r"vanilla: steps must be an integer from 1 to max_new_tokens=32"):
        d3llm.generate(dream, PROMPT, "vanilla", max_new_tokens=32, steps=10**9)
    with pytest.raises(GenerationError, match=r"vanilla: alg_temp=1e-40 is too small"):
        d3llm.generate(dream, PROMPT, "vanilla", max_new_tokens=32, alg_temp=1e-40)
