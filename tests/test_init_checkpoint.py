"""Real-scale configs by name and random checkpoints in the real layout (``d3llm init``): the public config.json
keys (SPEC 2.1, 2.5), the public tensor names and shapes (SPEC 2.2, 2.5) and the shard index at 8B/7B shape
(computed, not written: a 16 GB write is measured in benchmarks/real_scale_io.py), and a written small checkpoint
that loads back with the weights build_model gives."""

import json

import pytest
import torch

import d3llm
from d3llm.cli.main import main
from d3llm.errors import CheckpointError
from d3llm.models.checkpoint import build_model, expected_tensors, load_config, shard_file_names
from d3llm.models.configs import named_config
from d3llm.models.random_checkpoint import PLACEHOLDER_NOTE, checkpoint_layout, init_checkpoint

# GSAI-ML/LLaDA-8B-Instruct's config.json as SPEC 2.1 lists it (torch_dtype: the stored dtype, which every
# save writes; transformers_version, the writer's stamp, is not reproduced).
LLADA_8B_PUBLIC = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"],
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
    "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288, "mlp_ratio": 4,
    "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096,
    "activation_type": "silu", "block_type": "llama", "block_group_size": 1, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-05, "rope": True, "rope_theta": 500000.0,
    "rope_full_precision": True, "alibi": False, "alibi_bias_max": 8.0, "include_bias": False,
    "include_qkv_bias": False, "bias_for_layer_norm": False, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True, "input_emb_norm": False, "scale_logits": False, "weight_tying": False,
    "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0, "multi_query_attention": None,
    "flash_attention": False, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
    "use_cache": False, "precision": "amp_bf16", "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
    "init_cutoff_factor": None, "torch_dtype": "bfloat16",
}
# Dream-org/Dream-v0-Instruct-7B's config.json (SPEC 2.5 sizes; the Qwen2 keys of the reference DreamConfig).
DREAM_7B_PUBLIC = {
    "model_type": "Dream", "architectures": ["DreamModel"],
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "intermediate_size": 18944, "vocab_size": 152064, "max_position_embeddings": 131072, "hidden_act": "silu",
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
    "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": False, "use_sliding_window": False,
    "sliding_window": None, "max_window_layers": 28, "mask_token_id": 151666, "pad_token_id": 151643,
    "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}


def written_config(name: str) -> dict:
    """The config.json init_checkpoint writes for ``name`` (the same dict as in the folder)."""
    out = named_config(name).to_dict()
    out["torch_dtype"] = "bfloat16"
    return out


@pytest.mark.parametrize("name, public", [("llada-8b-instruct", LLADA_8B_PUBLIC), ("d3llm-llada", LLADA_8B_PUBLIC),
                                          ("dream-7b-instruct", DREAM_7B_PUBLIC), ("d3llm-dream", DREAM_7B_PUBLIC)])
def test_real_configs_write_every_public_key(name, public):
    assert written_config(name) == public
    assert named_config(name).from_dict(public).to_dict() | {"torch_dtype": "bfloat16"} == public  # round trip


def test_real_layouts_have_the_public_tensor_names_shapes_and_shards():
    llada = expected_tensors(named_config("llada-8b-instruct"))
    assert len(llada) == 291
    assert llada["model.transformer.wte.weight"] == (126464, 4096)
    assert llada["model.transformer.blocks.31.ff_proj.weight"] == (12288, 4096)
    assert llada["model.transformer.blocks.0.attn_out.weight"] == (4096, 4096)
    assert llada["model.transformer.ff_out.weight"] == (126464, 4096)
    dream = expected_tensors(named_config("dream-7b-instruct"))
    assert dream["model.layers.27.self_attn.k_proj.weight"] == (512, 3584)
    assert dream["model.layers.0.self_attn.q_proj.bias"] == (3584,)
    assert dream["lm_head.weight"] == (152064, 3584)
    assert not any(k.endswith("inv_freq") for k in dream)

    _, entries, shards = checkpoint_layout(named_config("llada-8b-instruct"), torch.bfloat16, "5GB")
    sizes = [sum(2 * torch.Size(entries[k][0]).numel() for k in shard) for shard in shards]
    assert len(shards) == 4 and max(sizes) <= 5e9 and sum(sizes) == 2 * 8_015_581_184
    assert sorted(k for s in shards for k in s) == sorted(llada)
    assert shard_file_names(shards)[0] == "model-00001-of-00004.safetensors"
    assert {dtype for _, dtype in entries.values()} == {torch.bfloat16}


def test_init_writes_a_sharded_folder_equal_to_build_model(tmp_path):
    config = named_config("dream-small", vocab_size=600)
    folder = init_checkpoint(config, tmp_path / "m", seed=3, max_shard_size="200KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((folder / f).is_file() for f in files)
    loaded = d3llm.load_model(folder, device="cpu")
    built = build_model(config, seed=3, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in built.state_dict().values())
    for key, tensor in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert load_config(folder).to_dict() == config.to_dict() | {"torch_dtype": "bfloat16"}

    # the placeholder tokenizer: marked, byte-level (round-trips any text), with the config's special ids
    assert json.loads((folder / "tokenizer_config.json").read_text())["d3llm_placeholder"] == PLACEHOLDER_NOTE
    assert "PLACEHOLDER" in (folder / "README.md").read_text()
    tok = d3llm.load_tokenizer(folder)
    assert tok.decode(tok.encode("héllo, 12 ✓")) == "héllo, 12 ✓"
    assert (tok.eos_token_id, tok.mask_token_id) == (config.eos_token_id, config.mask_token_id)
    result = d3llm.generate(loaded, [tok.encode("hi")], "multi_block", max_new_tokens=16, block_size=8)
    assert len(result.tokens[0]) > 0

    with pytest.raises(CheckpointError, match="already holds a model"):
        init_checkpoint(config, folder)
    init_checkpoint(config, folder, seed=4, overwrite=True)  # one file now: the shards and index are removed
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]


def test_init_cli(tmp_path, capsys):
    assert main(["init", "llada-small", "--out", str(tmp_path / "m"), "--max-shard-size", "1MB"]) == 0
    assert "random weights" in capsys.readouterr().out
    built = build_model("llada-small", dtype=torch.bfloat16)
    loaded = d3llm.load_model(tmp_path / "m", device="cpu")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in built.state_dict().items())
    assert "too small" in (tmp_path / "m" / "README.md").read_text()  # vocabulary 256: no placeholder tokenizer
    assert main(["init", "llada-small", "--out", str(tmp_path / "m")]) == 2
    assert "already holds a model" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_build_model_allocates_in_the_target_dtype(dtype):
    """Built directly in ``dtype`` (no float32 model first), with the values of a float32 build cast."""
    direct = build_model("llada-tiny", seed=5, dtype=dtype)
    cast = build_model("llada-tiny", seed=5).to(dtype)
    assert {p.dtype for p in direct.parameters()} == {dtype}
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), cast.state_dict().values()))


def test_a_conversion_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    import d3llm.models.checkpoint as checkpoint

    folder = init_checkpoint("llada-tiny", tmp_path / "m")  # bf16 on disk
    monkeypatch.setattr(checkpoint, "available_memory", lambda device: 1000)
    with pytest.raises(CheckpointError, match=r"converted to float32 need .* GiB on cpu, and only 0.0 GiB is "
                                              r"available; load them in their stored dtype \(bfloat16"):
        d3llm.load_model(folder, device="cpu", dtype="float32")
    assert d3llm.load_model(folder, device="cpu").dtype == torch.bfloat16  # no conversion: nothing to check
    monkeypatch.undo()
    model = d3llm.load_model(folder, device="cpu", dtype="float32")
    key = "model.transformer.wte.weight"
    bf16 = build_model("llada-tiny", dtype=torch.bfloat16)
    assert torch.equal(model.state_dict()[key], bf16.state_dict()[key].float())


def test_init_names_the_configs_on_a_wrong_one(tmp_path, capsys):
    assert main(["init", "llada-9b", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "unknown model config 'llada-9b'" in err and "llada-8b-instruct" in err and "dream-7b-instruct" in err
    assert not (tmp_path / "m").exists()
