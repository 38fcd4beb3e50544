"""The causal Llama family: transformers' LlamaForCausalLM loads our folders as they are, with identical logits."""

import json

import pytest
import torch
from transformers import LlamaForCausalLM

import d3llm
from d3llm import CheckpointError


def hf_llama(folder) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = d3llm.build_model("llama-tiny", seed=7)
    d3llm.save_model(model, folder)
    return model, folder


def test_folder_loads_in_transformers_with_identical_logits(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    theirs_model = hf_llama(folder)
    ids = torch.randint(0, 120, (3, 29))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = theirs_model(ids).logits
    # Aligned logits: position i is scored by the raw next-token output at i - 1.
    assert (ours[:, 1:] - theirs[:, :-1]).abs().max() < 1e-5
    # Causal by construction: changing a later token leaves every earlier position's logits unchanged.
    changed = ids.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 120
    with torch.no_grad():
        again = model(changed).logits
    assert torch.equal(again[:, :21], ours[:, :21]) and not torch.equal(again[:, 21:], ours[:, 21:])


def test_left_padded_batch_matches_transformers(saved):
    model, folder = saved
    theirs_model = hf_llama(folder)
    ids = torch.randint(0, 120, (2, 14))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        theirs = theirs_model(ids, attention_mask=mask, position_ids=position_ids).logits
    assert (ours[0, 1:] - theirs[0, :-1]).abs().max() < 1e-5
    assert (ours[1, 6:] - theirs[1, 5:-1]).abs().max() < 1e-5


def test_round_trip_and_cached_forwards_are_exact(saved):
    model, folder = saved
    loaded = d3llm.load_model(folder, device="cpu")
    assert type(loaded) is d3llm.LlamaLM and loaded.causal
    ids = torch.randint(0, 120, (2, 17))
    with torch.no_grad():
        full = model(ids).logits
        assert torch.equal(loaded(ids).logits, full)
        # A causal model's cache is exact: a prefix forward, then one position at a time.
        out = model(ids[:, :9], use_cache=True)
        singles = [model(ids[:, i:i + 1], cache=out.cache, start=i).logits[:, 0] for i in range(9, 17)]
    assert (out.logits - full[:, :9]).abs().max() < 1e-5
    # A one-position slice is scored by its own output (the shift stays within the slice): the raw next-token
    # output at i, which the full forward puts at position i + 1.
    raw = torch.stack(singles, dim=1)
    assert (raw[:, :-1] - full[:, 10:]).abs().max() < 1e-5


def test_transformers_5_rope_parameters_are_read(saved, tmp_path):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    theta = config.pop("rope_theta")
    config.pop("rope_scaling")
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert d3llm.load_config(tmp_path).rope_theta == theta
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"key 'rope_scaling' = .*yarn.* is not supported"):
        d3llm.load_config(tmp_path)


@pytest.mark.parametrize("key,value,message", [
    ("attention_bias", True, r"key 'attention_bias' = True is not supported \(expected False\); d3llm implements "
                             r"the Llama layout without biases"),
    ("mlp_bias", True, r"key 'mlp_bias' = True is not supported"),
    ("hidden_act", "gelu", r"key 'hidden_act' = 'gelu' is not supported"),
])
def test_unsupported_llama_variants_are_refused(saved, tmp_path, key, value, message):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        d3llm.load_config(tmp_path)
