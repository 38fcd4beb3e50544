"""Random-weight checkpoints in the real layout (``d3llm init``), written tensor by tensor.

``init_checkpoint("llada-8b-instruct", DIR)`` writes what ``GSAI-ML/LLaDA-8B-Instruct`` holds, with random weights:
``config.json`` with every public key, bf16 safetensors shards with ``model.safetensors.index.json`` and the public
key names, and a placeholder tokenizer marked as such. Users test their infrastructure on it (serving, launch
scripts, sharded loading) before downloading 16 GB.

Memory: the model is built on the meta device (shapes only); each tensor is then allocated, initialised with the
values :func:`~d3llm.models.checkpoint.build_model` would give it (the same generator, the same order, see
:meth:`~d3llm.models.base.DiffusionLM.init_weights`), written to its shard and freed. The safetensors library's
``save_file`` needs every tensor of a file in memory at once and copies each to ``bytes`` first (twice a shard), so
shards are written here by :class:`_StreamingSafetensors`, which follows the published format (an 8-byte header
length, a JSON header of dtype/shape/offsets, then the raw little-endian data); files are read back with
``safetensors`` itself. Peak memory is one tensor (the embedding: 1 GiB at 8B) plus a 16 MiB draw buffer.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch

from d3llm.errors import CheckpointError
from d3llm.files import atomic_write, atomic_write_text, make_folder
from d3llm.models.base import resolve_dtype, skip_init
from d3llm.models.checkpoint import (
    CONFIG_NAME, MODEL_CLASSES, _DTYPE_NAMES, _parse_size, plan_shards, shard_file_names,
    write_default_generation_config, write_weights,
)
from d3llm.models.configs import ModelConfig, named_config

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}

PLACEHOLDER_NOTE = (
    "PLACEHOLDER written by `d3llm init`: the weights are random and this tokenizer is not the model's. Its ids "
    "are bytes (ids 0-255) and the model's special tokens at their real ids; every other id is a placeholder "
    "token. Replace the weights and the tokenizer files with the real ones before any use but infrastructure tests."
)

# Special tokens of the public checkpoints (SPEC 2.4 and 2.5) and their chat templates, for the placeholder.
_LLADA_TEMPLATE = (
    "{{ '<|startoftext|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLACEHOLDER_TOKENIZERS = {
    "llada": dict(
        specials={"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                  "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348},
        roles=dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                   mask_token="<|mdm_mask|>"),
        template=_LLADA_TEMPLATE,
    ),
    "dream": dict(
        specials={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|mask|>": 151666},
        roles=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>"),
        template=_CHATML_TEMPLATE,
    ),
}


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return dtype.itemsize * math.prod(shape)


class _StreamingSafetensors:
    """Write one safetensors file tensor by tensor: the header is computed from shapes and dtypes up front, then
    each tensor's bytes are written as it is produced (no copy of the file's contents in memory)."""

    def __init__(self, fh: BinaryIO, entries: list[tuple[str, tuple[int, ...], torch.dtype]]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in entries:
            nbytes = _nbytes(shape, dtype)
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        self.fh, self.order, self.done = fh, [e[0] for e in entries], 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name != self.order[self.done]:
            raise RuntimeError(f"tensor {name!r} written out of order (expected {self.order[self.done]!r})")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self.fh.write(memoryview(data))
        self.done += 1


def placeholder_tokenizer(config: ModelConfig, folder: Path) -> bool:
    """Write the placeholder tokenizer (``tokenizer.json``, ``tokenizer_config.json``) of a named real config into
    ``folder``; returns False (writing nothing) for configs whose vocabulary cannot hold 256 byte tokens and the
    special ids. See :data:`PLACEHOLDER_NOTE`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    spec = PLACEHOLDER_TOKENIZERS.get(config.family)
    vocab_size = config.padded_vocab_size
    if spec is None or config.mask_token_id not in spec["specials"].values() or vocab_size <= max(
            spec["specials"].values()):
        specials = {"<|endoftext|>": config.eos_token_id, "<|mask|>": config.mask_token_id}
        spec = dict(specials={k: v for k, v in specials.items() if v is not None},
                    roles=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>"),
                    template="{% for message in messages %}{{ message['content'] }}\n{% endfor %}")
    special_ids = set(spec["specials"].values())
    if vocab_size < 256 + len(special_ids) or any(i < 256 for i in special_ids):
        return False
    by_id = {i: tok for tok, i in spec["specials"].items()}
    alphabet = iter(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    placeholders = 0
    for i in range(vocab_size):
        if i in by_id:
            vocab[by_id[i]] = i
        elif i < 256:
            vocab[next(alphabet)] = i
        else:
            vocab[f"<|placeholder_{placeholders}|>"] = i
            placeholders += 1
    unk = "<|placeholder_0|>" if placeholders else next(iter(spec["specials"]))  # bytes cover every input
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        pre_tokenizers.Split(Regex("."), behavior="isolated"),  # one byte, one token
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"]])
    tokenizer_config = {
        "d3llm_placeholder": PLACEHOLDER_NOTE,
        "tokenizer_class": "PreTrainedTokenizerFast",
        **spec["roles"],
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_length, "chat_template": spec["template"],
    }
    atomic_write(folder / "tokenizer.json", lambda p: backend.save(str(p)))
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
    return True


def checkpoint_layout(config: ModelConfig, dtype: torch.dtype, max_shard_size: int | str = "5GB"):
    """What :func:`init_checkpoint` writes, without writing: ``(meta_model, entries, shards)``, where ``entries``
    maps each tensor name to ``(shape, dtype)`` and ``shards`` lists the names of each weight file, in the order
    the tensors are initialised (the model's registration order; see :func:`shard_file_names` for file names)."""
    with torch.device("meta"), skip_init():
        model = MODEL_CLASSES[config.family](config)
    params = dict(model.named_parameters())
    entries = {name: (tuple(t.shape), dtype) for name, t in model.state_dict(keep_vars=True).items()}
    if set(entries) != set(params):
        raise CheckpointError(f"{config.family} configs with tied weights cannot be written tensor by tensor; "
                              f"build the model with build_model() and save it with save_model()")
    sizes = [(name, _nbytes(*entries[name])) for name in params]
    return model, entries, plan_shards(sizes, _parse_size(max_shard_size))


def init_checkpoint(
    config: ModelConfig | str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: torch.dtype | str = torch.bfloat16,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write a random-weight checkpoint of ``config`` (a config or a named one, e.g. ``"llada-8b-instruct"``) into
    ``path``; returns the folder.

    The weights equal ``build_model(config, seed=seed, dtype=dtype)``'s. ``config.json`` is written last (a folder
    without it is incomplete); an existing model folder is refused unless ``overwrite``. ``progress(done_bytes,
    total_bytes, name)`` is called after each tensor.
    """
    title = config if isinstance(config, str) else config.family
    if isinstance(config, str):
        config = named_config(config)
    store_dtype = resolve_dtype(dtype) or torch.bfloat16
    if store_dtype not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"dtype {store_dtype} cannot be written; expected one of bf16, fp16, fp32, fp64")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot write a checkpoint into '{folder}': it is a file")
    if (folder / CONFIG_NAME).exists() and not overwrite:
        raise CheckpointError(f"'{folder}' already holds a model ({CONFIG_NAME}); choose another folder or overwrite")
    make_folder(folder)
    (folder / CONFIG_NAME).unlink(missing_ok=True)  # the folder is incomplete until the new config is written

    model, entries, shards = checkpoint_layout(config, store_dtype, max_shard_size)
    size_of = {name: _nbytes(*entry) for name, entry in entries.items()}
    total = sum(size_of.values())
    generator = torch.Generator().manual_seed(seed)
    done = 0

    def write_shard(file: Path, names: list[str]) -> None:
        nonlocal done
        with open(file, "wb") as fh:
            writer = _StreamingSafetensors(fh, [(name, *entries[name]) for name in names])
            for name in names:
                tensor = torch.empty(entries[name][0], dtype=store_dtype)
                model.init_parameter_(name, tensor, generator, std=0.02, seed=seed)
                writer.write(name, tensor)
                del tensor
                done += size_of[name]
                if progress is not None:
                    progress(done, total, name)

    write_weights(folder, shards, write_shard, total_size=total)
    wrote_tokenizer = placeholder_tokenizer(config, folder)
    size = f"{total / 1e9:.2f} GB" if total >= 1e8 else f"{total / 1e6:.2f} MB"
    tokenizer_note = PLACEHOLDER_NOTE if wrote_tokenizer else (
        "The weights are random, and no tokenizer was written: the vocabulary is too small for the placeholder's "
        "256 byte tokens and special ids.")
    readme = (f"# Random-weight `{title}` checkpoint\n\n{tokenizer_note}\n\n"
              f"Written by `d3llm init` (seed {seed}, {_DTYPE_NAMES[store_dtype]}, {len(shards)} weight file(s), "
              f"{size}).\n")
    atomic_write_text(folder / "README.md", readme)
    write_default_generation_config(config, folder)
    config_dict = config.to_dict()
    config_dict["torch_dtype"] = _DTYPE_NAMES[store_dtype]
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config_dict, indent=2) + "\n")  # last: marks completion
    return folder


__all__ = ["checkpoint_layout", "init_checkpoint", "placeholder_tokenizer", "PLACEHOLDER_NOTE", "shard_file_names"]
