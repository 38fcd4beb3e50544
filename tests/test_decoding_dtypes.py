"""Decoding in the dtypes real checkpoints ship in: every decoder of both families runs in bfloat16 and float16
(numpy has no bfloat16: the scores reach the host as float32) and gives the same tokens whatever the batch."""

import pytest
import torch

import d3llm

# Every method and cache mode on the tiny models at 16 new tokens (also the host-sync test's list).
SETTINGS = [
    ("vanilla", dict(steps=16, block_size=8)),
    ("block_entropy", dict(steps=16, threshold=0.5, block_size=8)),
    ("eb_sampler", dict(steps=16, threshold=0.5, block_size=8)),
    ("fast_dllm", dict(steps=16, cache="none", block_size=8)),
    ("fast_dllm", dict(steps=16, cache="prefix", block_size=8)),
    ("fast_dllm", dict(steps=16, cache="dual", block_size=8)),
    ("multi_block", dict(threshold=0.5, block_size=8)),
    ("multi_block", dict(threshold=0.5, block_size=8, cache_delay_iter=2, refresh_interval=3, early_stop=True)),
    ("multi_block", dict(threshold=0.5, block_size=8, cache_delay_iter=2, suffix_cache=True, early_stop=True)),
    ("multi_block", dict(threshold=0.5, block_size=8, commit_rule="budget", cache_delay_iter=2)),
    ("fast_dllm_factor", dict(steps=16, block_size=8)),
    ("hierarchy", dict(steps=16, block_size=8, cache="prefix")),
    ("local_leap", dict(steps=16, block_size=8, cache="none")),
    ("credit", dict(steps=16, block_size=8)),
    ("klass", dict(steps=16, block_size=8)),
]
LLADA_ONLY = {"vanilla", "klass"}  # Dream has its own vanilla (below); klass decodes LLaDA only
DREAM_VANILLA = [("vanilla", dict(steps=16, alg=alg)) for alg in ("origin", "maskgit_plus", "topk_margin", "entropy")]
DREAM_VANILLA.append(("vanilla", dict(steps=16, alg="entropy", alg_temp=0.5)))


def settings_for(family: str) -> list[tuple[str, dict]]:
    """SETTINGS for a LLaDA model; for Dream, its own vanilla (every ``alg``) in place of LLaDA's, and no klass."""
    return SETTINGS if family.startswith("llada") else [s for s in SETTINGS if s[0] not in LLADA_ONLY] + DREAM_VANILLA


PROMPTS = [[1, 2, 3, 4, 5], [6, 7]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", ["llada-tiny", "dream-tiny"])
def test_every_decoder_runs_in_half_precision(family, dtype):
    model = d3llm.build_model(family, seed=1).to(dtype)
    for method, params in settings_for(family):
        together = d3llm.generate(model, PROMPTS, method, max_new_tokens=16, seed=0, **params)
        assert (together.generated != model.config.mask_token_id).all(), (method, params)
        for i, prompt in enumerate(PROMPTS):
            alone = d3llm.generate(model, [prompt], method, max_new_tokens=16, seed=0, **params)
            assert alone.tokens[0] == together.tokens[i], (method, params, i)
