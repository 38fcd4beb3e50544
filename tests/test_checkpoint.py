"""Checkpoint I/O in the public layout: exact key names and config fields, round trips, sharding, atomic saves."""

import json

import pytest
import torch
from safetensors import safe_open

import d3llm
from d3llm.models.checkpoint import expected_tensors

# SPEC 2.1: every field of LLaDA-8B-Instruct's config.json must be written explicitly.
LLADA_FIELDS = """model_type architectures auto_map d_model n_layers n_heads n_kv_heads mlp_hidden_size mlp_ratio
vocab_size embedding_size max_sequence_length activation_type block_type block_group_size layer_norm_type
layer_norm_with_affine rms_norm_eps rope rope_theta rope_full_precision alibi alibi_bias_max include_bias
include_qkv_bias bias_for_layer_norm attention_layer_norm attention_layer_norm_with_affine input_emb_norm
scale_logits weight_tying attention_dropout residual_dropout embedding_dropout multi_query_attention
flash_attention mask_token_id eos_token_id pad_token_id use_cache precision init_device init_fn init_std
init_cutoff_factor""".split()


def _keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_llada_keys_and_config_are_the_public_layout(tmp_path):
    model = d3llm.build_model("llada-tiny")
    d3llm.save_model(model, tmp_path)
    keys = _keys(tmp_path)
    assert "model.transformer.wte.weight" in keys
    assert "model.transformer.ff_out.weight" in keys  # the LM head
    assert "model.transformer.ln_f.weight" in keys
    for leaf in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"):
        assert f"model.transformer.blocks.1.{leaf}.weight" in keys
    assert len(keys) == 3 + 9 * 2  # no biases, no rotary buffers
    config = json.loads((tmp_path / "config.json").read_text())
    missing = [f for f in LLADA_FIELDS if f not in config]
    assert not missing
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert config["block_type"] == "llama" and config["activation_type"] == "silu"
    assert config["weight_tying"] is False and config["attention_dropout"] == 0.0
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_dream_keys_are_qwen2_names(tmp_path):
    model = d3llm.build_model("dream-tiny")
    d3llm.save_model(model, tmp_path)
    keys = _keys(tmp_path)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"} <= keys
    assert "model.layers.0.self_attn.o_proj.bias" not in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["architectures"] == ["DreamModel"]
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == model.config.eos_token_id


@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
def test_round_trip_gives_identical_logits(tmp_path, name):
    model = d3llm.build_model(name, seed=7)
    d3llm.save_model(model, tmp_path)
    loaded = d3llm.load_model(tmp_path, device="cpu")
    ids = torch.randint(0, 120, (2, 13))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "torch_dtype"}  # noqa: E731
    assert strip(loaded.config) == strip(model.config)
    assert not loaded.training


def test_sharded_save_writes_an_index_and_loads(tmp_path):
    model = d3llm.build_model("llada-tiny")
    d3llm.save_model(model, tmp_path, max_shard_size=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(expected_tensors(model.config))
    loaded = d3llm.load_model(tmp_path, device="cpu")
    ids = torch.randint(0, 120, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    # saving again unsharded removes the stale shards and index
    d3llm.save_model(model, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert not list(tmp_path.glob("model-*.safetensors"))
    assert not list(tmp_path.glob("*.tmp"))


def test_bf16_save_and_dtype_choice_on_load(tmp_path):
    model = d3llm.build_model("dream-tiny")
    d3llm.save_model(model, tmp_path, dtype="bf16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert d3llm.load_model(tmp_path, device="cpu").dtype == torch.bfloat16  # as stored
    assert d3llm.load_model(tmp_path, device="cpu", dtype=torch.float32).dtype == torch.float32


def test_unknown_config_fields_survive_a_round_trip(tmp_path):
    model = d3llm.build_model("llada-tiny")
    d3llm.save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["some_future_field"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = d3llm.load_model(tmp_path, device="cpu")
    out = tmp_path / "again"
    d3llm.save_model(loaded, out)
    assert json.loads((out / "config.json").read_text())["some_future_field"] == {"a": 1}


def test_tokenizer_files_are_copied_verbatim(tmp_path):
    src = tmp_path / "src"
    model = d3llm.build_model("llada-tiny")
    d3llm.save_model(model, src)
    (src / "tokenizer.json").write_text('{"not": "parsed"}')
    (src / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    loaded = d3llm.load_model(src, device="cpu")
    dst = tmp_path / "dst"
    d3llm.save_model(loaded, dst)
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (dst / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()


def test_interrupted_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = d3llm.build_model("llada-tiny", seed=1)
    d3llm.save_model(model, tmp_path)
    other = d3llm.build_model("llada-tiny", seed=2)

    import d3llm.models.checkpoint as ckpt

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        d3llm.save_model(other, tmp_path)
    monkeypatch.undo()
    loaded = d3llm.load_model(tmp_path, device="cpu")
    ids = torch.randint(0, 120, (1, 6))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert not list(tmp_path.glob(".*.tmp"))


def test_named_configs_and_overrides():
    assert {"llada-tiny", "dream-tiny"} <= set(d3llm.NAMED_CONFIGS)
    model = d3llm.build_model("llada-tiny", vocab_size=300, mask_token_id=299, eos_token_id=298)
    assert model.config.vocab_size == 300 and model.mask_token_id == 299 and model.eos_token_id == 298
    assert model.model.transformer.wte.weight.shape == (300, 64)
    with pytest.raises(d3llm.ConfigError, match="unknown model config 'llada-huge'"):
        d3llm.build_model("llada-huge")
    with pytest.raises(d3llm.ConfigError, match="config 'llada-tiny'.*unexpected keyword argument 'nonsense'"):
        d3llm.build_model("llada-tiny", nonsense=1)
