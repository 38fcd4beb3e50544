"""Every bad input to the loaders gets a clear error naming the file, key or value and what was expected."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import d3llm
from d3llm import CheckpointError, ConfigError


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "ckpt"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


_DELETE = object()


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"model folder '.*nowhere' does not exist"):
        d3llm.load_model(tmp_path / "nowhere")


def test_path_is_a_file(tmp_path):
    file = tmp_path / "weights.safetensors"
    file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file; expected a model folder"):
        d3llm.load_model(file)


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json not found: a model folder needs config.json"):
        d3llm.load_model(saved)


def test_config_not_json(saved):
    (saved / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        d3llm.load_model(saved)


def test_unknown_model_type(saved):
    _edit_config(saved, model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'gpt2' is not supported; expected one of"):
        d3llm.load_model(saved)


def test_model_type_wrong_case_gets_a_hint(saved):
    _edit_config(saved, model_type="dream")
    with pytest.raises(CheckpointError, match=r"model_type 'dream' is not supported \(did you mean 'Dream'\?\)"):
        d3llm.load_model(saved)


def test_missing_model_type(saved):
    _edit_config(saved, model_type=_DELETE)
    with pytest.raises(CheckpointError, match=r"key 'model_type' is missing"):
        d3llm.load_model(saved)


def test_missing_field_that_changes_the_maths(saved):
    # The reference loader would silently default block_type to 'sequential' (another architecture).
    _edit_config(saved, block_type=_DELETE)
    with pytest.raises(CheckpointError, match=r"key 'block_type' = 'sequential' is not supported \(expected 'llama'\)"):
        d3llm.load_model(saved)


def test_wrong_field_type(saved):
    _edit_config(saved, d_model="64")
    with pytest.raises(CheckpointError, match=r"key 'd_model' = '64' has the wrong type; expected int"):
        d3llm.load_model(saved)


def test_special_id_outside_vocabulary(saved):
    _edit_config(saved, mask_token_id=5000)
    with pytest.raises(CheckpointError, match=r"mask_token_id = 5000 is outside the vocabulary \[0, 128\)"):
        d3llm.load_model(saved)


def test_no_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"holds no weights: expected model.safetensors or "
                                              r"model.safetensors.index.json"):
        d3llm.load_model(saved)


def test_shards_without_index(saved):
    (saved / "model.safetensors").rename(saved / "model-00001-of-00002.safetensors")
    with pytest.raises(CheckpointError, match=r"found model-00001-of-00002.safetensors but no index naming them"):
        d3llm.load_model(saved)


def test_missing_tensors(saved):
    from safetensors.torch import load_file

    state = load_file(str(saved / "model.safetensors"))
    del state["model.transformer.blocks.1.q_proj.weight"]
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"lack 1 tensor\(s\) a llada model .* needs: "
                                              r"model.transformer.blocks.1.q_proj.weight"):
        d3llm.load_model(saved)


def test_unexpected_tensors_and_lora_hint(saved):
    from safetensors.torch import load_file

    state = load_file(str(saved / "model.safetensors"))
    state["base_model.model.model.transformer.blocks.0.q_proj.lora_A.weight"] = torch.zeros(2, 64)
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 unexpected tensor\(s\) .*lora_A.* PEFT/LoRA adapter weights: "
                                              r"merge the adapter"):
        d3llm.load_model(saved)
    assert d3llm.load_model(saved, strict=False) is not None


def test_misshaped_tensor(saved):
    from safetensors.torch import load_file

    state = load_file(str(saved / "model.safetensors"))
    state["model.transformer.blocks.0.ff_proj.weight"] = torch.zeros(100, 64)
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.transformer.blocks.0.ff_proj.weight' "
                                              r"has shape \[100, 64\], but config.json .* expects \[128, 64\]"):
        d3llm.load_model(saved)


def test_index_names_a_missing_shard(tmp_path):
    folder = tmp_path / "sharded"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder, max_shard_size=100_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match=rf"names shard '{victim}' \(for tensor '.*'\), but .* is missing"):
        d3llm.load_model(folder)


def test_index_not_naming_a_needed_tensor(tmp_path):
    folder = tmp_path / "sharded"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder, max_shard_size=100_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.transformer.ln_f.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index.json does not name 1 tensor\(s\) .*model.transformer.ln_f.weight"):
        d3llm.load_model(folder)


def test_index_with_a_path_outside_the_folder(tmp_path):
    folder = tmp_path / "sharded"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder, max_shard_size=100_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.ln_f.weight"] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"maps to '../elsewhere.safetensors', which is not a file name"):
        d3llm.load_model(folder)


def test_truncated_safetensors(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file \(truncated or "
                                              r"corrupted\?\)"):
        d3llm.load_model(saved)


def test_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        d3llm.load_model(saved)


class _Exploit:
    """A pickle that would run code when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoint_with_code_is_refused_and_never_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    (saved / "model.safetensors").unlink()
    with open(saved / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.transformer.wte.weight": _Exploit(marker)}, fh)
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refusing to load this pickle checkpoint; only plain "
                                              r"tensors are accepted"):
        d3llm.load_model(saved)
    assert not marker.exists()


def test_plain_tensor_pickle_checkpoint_loads_with_weights_only(tmp_path):
    model = d3llm.build_model("llada-tiny", seed=3)
    folder = tmp_path / "bin"
    d3llm.save_model(model, folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = d3llm.load_model(folder, device="cpu")
    ids = torch.randint(0, 120, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("dtype,message", [
    ("float13", r"dtype 'float13' is not supported; use one of float32, bfloat16, float16"),
    (torch.int64, r"dtype torch.int64 is not usable for model weights"),
    (3, r"dtype 3 is not a dtype"),
])
def test_unusable_dtype(saved, dtype, message):
    with pytest.raises(ConfigError, match=message):
        d3llm.load_model(saved, dtype=dtype)


def test_cuda_requested_without_cuda(saved, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device 'cuda' was requested but CUDA is not available on this machine"):
        d3llm.load_model(saved, device="cuda")


def test_nonsense_device(saved):
    with pytest.raises(ConfigError, match=r"device 'gpu0' is not a valid torch device"):
        d3llm.load_model(saved, device="gpu0")


# -- d3llm info checks the weight files it lists; broken symlinks say so ------------------------------------------

def _info_error(folder, error_line) -> str:
    from d3llm.cli.main import main

    assert main(["info", str(folder)]) == 2
    return error_line("info").removeprefix("d3llm info: error: ")


def test_info_refuses_truncated_safetensors(saved, error_line):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[:-1])
    assert _info_error(saved, error_line) == (f"{saved / 'model.safetensors'} is not a readable safetensors file "
                                          f"(truncated or corrupted?): Error while deserializing header: incomplete "
                                          f"metadata, file not fully covered")


def test_info_refuses_a_truncated_shard(tmp_path, error_line):
    folder = tmp_path / "sharded"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder, max_shard_size=100_000)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:100])
    assert _info_error(folder, error_line).startswith(f"{shard} is not a readable safetensors file")


def test_info_refuses_a_truncated_pickle_checkpoint(saved, error_line):
    from safetensors.torch import load_file

    torch.save(load_file(saved / "model.safetensors"), saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    data = (saved / "pytorch_model.bin").read_bytes()
    (saved / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert _info_error(saved, error_line).startswith(f"{saved / 'pytorch_model.bin'} is not a readable torch checkpoint "
                                                 f"(truncated or corrupted?)")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_broken_symlink_is_named(saved, tmp_path, name, error_line):
    target = tmp_path / "cache" / "blobs" / "0123abcd"
    (saved / name).unlink()
    (saved / name).symlink_to(target)
    message = f"{saved / name} is a symlink to {target}, which does not exist"
    with pytest.raises(CheckpointError, match=message):
        d3llm.load_model(saved)
    assert _info_error(saved, error_line).startswith(message)


def test_a_broken_shard_symlink_is_named(tmp_path):
    folder = tmp_path / "sharded"
    d3llm.save_model(d3llm.build_model("llada-tiny"), folder, max_shard_size=100_000)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    shard.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(CheckpointError, match=f"{shard} is a symlink to {tmp_path / 'gone.safetensors'}, which "
                                              f"does not exist"):
        d3llm.load_model(folder)
