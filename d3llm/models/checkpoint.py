"""Reading and writing model folders in the public Hugging Face layout, without executing anything from them.

A folder holds ``config.json`` and either ``model.safetensors`` or shards named by ``model.safetensors.index.json``
(plus tokenizer files, and often remote modeling code, which is never imported). Legacy pickle weights
(``pytorch_model.bin``) are read with ``torch.load(weights_only=True)`` only, which refuses anything but tensors.

Writes are atomic (:func:`d3llm.files.atomic_write`): every file is written to a temporary name in the target folder
and renamed into place, the config last, so an interrupted or refused save (full disk, read-only folder) never
leaves a folder that loads with mixed or truncated weights.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from d3llm.errors import CheckpointError, ConfigError
from d3llm.files import atomic_write, atomic_write_text, make_folder, read_json
from d3llm.models.base import DiffusionLM, resolve_device, resolve_dtype, skip_init
from d3llm.models.configs import DreamConfig, LlamaConfig, ModelConfig, config_from_dict
from d3llm.models.dream import DreamLM
from d3llm.models.generation_config import GENERATION_CONFIG_NAME, GenerationConfig
from d3llm.models.llada import LLaDALM
from d3llm.models.llama import LlamaLM

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
)

#: the files :func:`save_model` may write into a folder (besides weight shards)
MODEL_FILES = (CONFIG_NAME, SAFE_WEIGHTS, SAFE_INDEX, GENERATION_CONFIG_NAME, *TOKENIZER_FILES)

MODEL_CLASSES: dict[str, type[DiffusionLM]] = {"llada": LLaDALM, "dream": DreamLM, "llama": LlamaLM}

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64"}


# ---------------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------------

def build_model(config: ModelConfig | str, *, seed: int | None = 0, device=None, dtype=None, **overrides: Any):
    """A randomly initialised model from a config object or a named config (``"llada-tiny"``, ``"dream-tiny"``...).

    ``overrides`` change fields of a named config (e.g. ``vocab_size=300``). ``device`` defaults to CPU here
    (random models are for tests and training from scratch), ``dtype`` to float32. The model is allocated once,
    directly in ``dtype`` on ``device``, and initialised in place (:meth:`DiffusionLM.init_weights`): peak memory is
    the model's own size, and the weights equal those of a float32 build cast to ``dtype``.
    """
    from d3llm.models.configs import named_config

    if isinstance(config, str):
        config = named_config(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"), skip_init():  # built without storage, then allocated once in the target dtype
        model = MODEL_CLASSES[config.family](config)
    model = model.to(dtype=resolve_dtype(dtype) or torch.float32).to_empty(device=dev)
    return model.init_weights(seed=seed).eval()  # in place: no float32 copy of a bf16 model, no second copy


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The exact checkpoint key -> shape map a folder of this config must hold."""
    with torch.device("meta"), skip_init():
        model = MODEL_CLASSES[config.family](config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def count_parameters(config: ModelConfig) -> int:
    """The number of parameters a model of this config has (counted on the meta device: nothing is allocated)."""
    return sum(math.prod(shape) for shape in expected_tensors(config).values())


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------

def _folder(path: str | os.PathLike) -> Path:
    """The model folder ``path`` names: a path, or a shipped model's name (``teacher``, ``student``, ``ar``; a real
    path wins, see :func:`d3llm.assets.resolve_model`)."""
    from d3llm.assets import resolve_model, unknown_model_hint

    folder = resolve_model(path)
    if not folder.exists():
        raise CheckpointError(f"model folder '{folder}' does not exist{unknown_model_hint(path)}")
    if not folder.is_dir():
        raise CheckpointError(f"'{folder}' is a file; expected a model folder holding {CONFIG_NAME} and weights")
    return folder


def refuse_broken_link(file: Path) -> None:
    """Raise :class:`~d3llm.errors.CheckpointError` when ``file`` is a symlink to a file that does not exist (a
    model folder of links into a download cache whose files were removed)."""
    if file.is_symlink() and not file.exists():
        raise CheckpointError(f"{file} is a symlink to {os.path.realpath(file)}, which does not exist; restore that "
                              f"file or replace the link with the file itself")


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read ``config.json`` of a model folder (and the EOS id of ``generation_config.json`` for Dream and Llama)."""
    folder = _folder(path)
    file = folder / CONFIG_NAME
    refuse_broken_link(file)
    if not file.is_file():
        raise CheckpointError(
            f"{file} not found: a model folder needs {CONFIG_NAME} and {SAFE_WEIGHTS} (or {SAFE_INDEX})"
        )
    try:
        config = config_from_dict(read_json(file, CheckpointError), source=str(file))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    gen_file = folder / GENERATION_CONFIG_NAME
    if isinstance(config, (DreamConfig, LlamaConfig)) and gen_file.is_file():
        generation = read_json(gen_file, CheckpointError)
        eos = generation.get("eos_token_id") if isinstance(generation, dict) else None  # GenerationConfig checks it
        if isinstance(eos, list):  # several stop ids: the first is the end-of-text id used for early stop
            eos = eos[0] if eos else None
        if isinstance(eos, int) and eos != config.eos_token_id:
            config = config.replace(eos_token_id=eos)
    return config


def weight_files(folder: Path) -> tuple[str, dict[str, Path]]:
    """Return (format, key -> file) for the folder's weights; format is 'safetensors' or 'pickle'."""
    index = folder / SAFE_INDEX
    single = folder / SAFE_WEIGHTS
    pickle_index, pickle_single = folder / PICKLE_INDEX, folder / PICKLE_WEIGHTS
    for file in (index, single, pickle_index, pickle_single):
        refuse_broken_link(file)
    if index.is_file():
        return "safetensors", _index_map(folder, index)
    if single.is_file():
        return "safetensors", {"*": single}
    if pickle_index.is_file():
        return "pickle", _index_map(folder, pickle_index)
    if pickle_single.is_file():
        return "pickle", {"*": pickle_single}
    others = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {', '.join(others)} but no index naming them)" if others else ""
    raise CheckpointError(f"{folder} holds no weights: expected {SAFE_WEIGHTS} or {SAFE_INDEX}{hint}")


def _index_map(folder: Path, index: Path) -> dict[str, Path]:
    data = read_json(index, CheckpointError)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: key 'weight_map' is missing or empty; expected {{tensor name: shard file}}")
    out: dict[str, Path] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith(".."):
            raise CheckpointError(f"{index}: tensor '{key}' maps to {shard!r}, which is not a file name in the folder")
        file = folder / shard
        refuse_broken_link(file)
        if not file.is_file():
            raise CheckpointError(
                f"{index} names shard '{shard}' (for tensor '{key}'), but {file} is missing; download the complete "
                f"checkpoint"
            )
        out[key] = file
    return out


def _unreadable_safetensors(file: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{file} is not a readable safetensors file (truncated or corrupted?): {exc}")


def check_weight_files(fmt: str, files: dict[str, Path]) -> None:
    """Check that every weight file opens, without reading any tensor: a safetensors header must parse and cover
    the file exactly (safetensors checks it against the file size); a zip-format pickle file must have its
    central directory (a legacy pickle is not checked). Raises :class:`~d3llm.errors.CheckpointError` naming the
    file and the problem."""
    import zipfile

    for file in dict.fromkeys(files.values()):
        if fmt == "safetensors":
            try:
                with safe_open(str(file), framework="pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError, ValueError) as exc:
                raise _unreadable_safetensors(file, exc) from None
            continue
        try:
            with open(file, "rb") as fh:
                is_zip = fh.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6
            if is_zip:
                zipfile.ZipFile(file).close()
        except (OSError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{file} is not a readable torch checkpoint (truncated or corrupted?): "
                                  f"{exc}") from None


def _iter_tensors(fmt: str, files: dict[str, Path], device: torch.device) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (name, tensor, file) for every tensor of the checkpoint, one file at a time."""
    for file in dict.fromkeys(files.values()):
        if fmt == "safetensors":
            try:
                with safe_open(str(file), framework="pt", device=str(device)) as handle:
                    for name in handle.keys():
                        yield name, handle.get_tensor(name), file
            except (SafetensorError, OSError, ValueError) as exc:
                raise _unreadable_safetensors(file, exc) from None
        else:
            try:
                state = torch.load(str(file), map_location=device, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
                raise CheckpointError(
                    f"{file}: refusing to load this pickle checkpoint; only plain tensors are accepted "
                    f"(torch.load with weights_only=True failed: {str(exc).splitlines()[0]}). Convert it to "
                    f"safetensors with a tool you trust."
                ) from None
            if not isinstance(state, dict):
                raise CheckpointError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(f"{file}: entry '{name}' is a {type(tensor).__name__}, not a tensor")
                yield name, tensor, file


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (CUDA: free device memory; CPU: Linux ``MemAvailable``),
    or None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_conversion_fits(folder: Path, nbytes: int, target: torch.dtype, stored: torch.dtype | None,
                           device: torch.device) -> None:
    """Refuse, before converting anything, a dtype conversion whose result cannot fit in ``device``'s memory."""
    available = available_memory(device)
    if available is not None and nbytes > available:
        raise CheckpointError(
            f"{folder}: the weights converted to {_DTYPE_NAMES.get(target, target)} need {nbytes / 2**30:.1f} GiB "
            f"on {device}, and only {available / 2**30:.1f} GiB is available; load them in their stored dtype "
            f"({_DTYPE_NAMES.get(stored, stored)}: dtype=None, or --dtype {_DTYPE_NAMES.get(stored, stored)}) or "
            f"free memory"
        )


def _shape_hint(config: ModelConfig) -> str:
    c = config
    return (f"hidden {c.hidden_size}, layers {c.num_layers}, heads {c.num_heads}/{c.num_kv_heads}, "
            f"mlp {c.intermediate_size}, vocab {c.padded_vocab_size}")


def load_model(path: str | os.PathLike, device=None, dtype=None, *, strict: bool = True) -> DiffusionLM:
    """Load a LLaDA, Dream or Llama folder (``config.json`` + safetensors) into a native model, in eval mode.

    Args:
        path: the model folder.
        device: target device; None = CUDA when available, else CPU.
        dtype: weight dtype (``torch.bfloat16``, ``"bf16"``, ...); None = as stored in the files.
        strict: refuse unexpected tensors (default). Missing or mis-shaped tensors are always an error.

    Nothing in the folder is executed: remote modeling code is ignored, pickle weights are read with
    ``weights_only=True``.
    """
    folder = _folder(path)
    config = load_config(folder)
    dev = resolve_device(device)
    want_dtype = resolve_dtype(dtype)
    fmt, files = weight_files(folder)
    expected = expected_tensors(config)
    index_keys = set(files) - {"*"}
    if index_keys:
        missing_in_index = sorted(set(expected) - index_keys)
        if missing_in_index:
            raise CheckpointError(
                f"{folder / (SAFE_INDEX if fmt == 'safetensors' else PICKLE_INDEX)} does not name "
                f"{len(missing_in_index)} tensor(s) a {config.family} model of this config needs: "
                f"{', '.join(missing_in_index[:5])}{' ...' if len(missing_in_index) > 5 else ''}"
            )

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    stored_dtype = None
    for name, tensor, file in _iter_tensors(fmt, files, dev):
        if name not in expected:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{file}: tensor '{name}' has shape {list(tensor.shape)}, but config.json ({_shape_hint(config)}) "
                f"expects {list(expected[name])}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{file}: tensor '{name}' has dtype {tensor.dtype}; expected floating point weights")
        stored_dtype = stored_dtype or tensor.dtype
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{folder}: the weights lack {len(missing)} tensor(s) a {config.family} model with this config.json "
            f"needs: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if unexpected and strict:
        hint = ""
        if any("lora_" in k or k.startswith("base_model.model.") for k in unexpected):
            hint = " These look like PEFT/LoRA adapter weights: merge the adapter into the base model first."
        raise CheckpointError(
            f"{folder}: {len(unexpected)} unexpected tensor(s) for a {config.family} model: "
            f"{', '.join(sorted(unexpected)[:5])}{' ...' if len(unexpected) > 5 else ''}.{hint} "
            f"(load_model(..., strict=False) ignores them)"
        )

    target = want_dtype or stored_dtype or torch.float32
    converted = sum(t.numel() * target.itemsize for t in state.values() if t.dtype != target)
    if converted:
        _check_conversion_fits(folder, converted, target, stored_dtype, dev)
    for name in list(state):  # tensor by tensor, dropping each source: the peak is the converted copy, not both
        if state[name].dtype != target:
            state[name] = state[name].to(target)
    with torch.device("meta"), skip_init():
        model = MODEL_CLASSES[config.family](config)
    model.load_state_dict(state, strict=True, assign=True)
    model.source_dir = str(folder)
    model.generation_config = GenerationConfig.load(folder)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------------------------

def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def save_model(
    model: DiffusionLM,
    path: str | os.PathLike,
    *,
    dtype=None,
    max_shard_size: int | str = "5GB",
    tokenizer: Any = None,
    generation_config: GenerationConfig | dict | None = None,
) -> Path:
    """Write ``config.json`` and safetensors weights with the public key names; returns the folder.

    Args:
        dtype: store the weights in this dtype (default: the model's). Real LLaDA/Dream checkpoints are bf16.
        max_shard_size: above this total size the weights are sharded with ``model.safetensors.index.json``.
        tokenizer: a tokenizer (anything with ``save_pretrained``) or a folder whose tokenizer files are copied
            verbatim. Default: copy them from the folder the model was loaded from, if any.
        generation_config: decoding defaults to write as ``generation_config.json`` (a
            :class:`~d3llm.models.generation_config.GenerationConfig` or its dict). Default: the model's own
            ``generation_config`` (read by ``load_model``), if any.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"cannot save into '{folder}': it is a file")
    make_folder(folder)
    store_dtype = resolve_dtype(dtype) or model.dtype
    config_dict = model.config.to_dict()
    config_dict["torch_dtype"] = _DTYPE_NAMES[store_dtype]

    state = model.state_dict()
    sizes = {k: v.numel() * store_dtype.itemsize for k, v in state.items()}
    shards = plan_shards([(k, sizes[k]) for k in sorted(sizes)], _parse_size(max_shard_size))

    def write_shard(file: Path, names: list[str]) -> None:  # converted shard by shard, not the whole model at once
        save_file({k: state[k].detach().to("cpu", store_dtype).contiguous() for k in names}, str(file),
                  metadata={"format": "pt"})

    write_weights(folder, shards, write_shard, total_size=sum(sizes.values()))
    _save_tokenizer(model, folder, tokenizer)
    generation = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if isinstance(generation, dict):
        generation = GenerationConfig.from_dict(generation)
    if generation is not None:
        generation.save(folder)
    else:
        write_default_generation_config(model.config, folder)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config_dict, indent=2) + "\n")  # last: marks completion
    return folder


def write_default_generation_config(config: ModelConfig, folder: Path) -> None:
    """For Dream and Llama folders without one: the ``generation_config.json`` of their special ids (transformers'
    layout, where Dream keeps the end-of-text id that early stop uses)."""
    if isinstance(config, (DreamConfig, LlamaConfig)) and not (folder / GENERATION_CONFIG_NAME).exists():
        gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
               "pad_token_id": config.pad_token_id, "mask_token_id": config.mask_token_id}
        atomic_write_text(folder / GENERATION_CONFIG_NAME, json.dumps(gen, indent=2) + "\n")


def plan_shards(sizes: list[tuple[str, int]], limit: int) -> list[list[str]]:
    """Split ``(name, bytes)`` pairs, in the given order, into consecutive shards of at most ``limit`` bytes each
    (a tensor larger than ``limit`` gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_file_names(shards: list[list[str]]) -> list[str]:
    """``model.safetensors`` for one shard, else ``model-0000i-of-0000n.safetensors`` (the Hugging Face names)."""
    if len(shards) == 1:
        return [SAFE_WEIGHTS]
    return [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]


def write_weights(folder: Path, shards: list[list[str]], write_shard, *, total_size: int) -> None:
    """Write the weight files of ``folder``: ``write_shard(tmp_path, names)`` writes one shard (atomically renamed
    into place), then the index for several shards; weight files of an earlier save in another layout are removed.
    The caller writes ``config.json`` last, which marks the folder complete."""
    old_files = {p.name for p in folder.glob("model*.safetensors")} | {SAFE_INDEX}
    names = shard_file_names(shards)
    for file, shard in zip(names, shards):
        atomic_write(folder / file, lambda p, s=shard: write_shard(p, s))
    written = set(names)
    if len(shards) > 1:
        weight_map = {k: file for file, shard in zip(names, shards) for k in shard}
        atomic_write_text(folder / SAFE_INDEX, json.dumps({"metadata": {"total_size": total_size},
                                                           "weight_map": weight_map}, indent=2) + "\n")
        written.add(SAFE_INDEX)
    for stale in old_files - written:
        (folder / stale).unlink(missing_ok=True)


def _save_tokenizer(model: DiffusionLM, folder: Path, tokenizer: Any) -> None:
    source = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
    if tokenizer is None:
        source = getattr(model, "source_dir", None)
    if source is not None:
        src = Path(source)
        if not src.is_dir():
            raise CheckpointError(f"tokenizer folder '{src}' does not exist")
        if src.resolve() == folder.resolve():
            return
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                data = (src / name).read_bytes()
                atomic_write(folder / name, lambda p, d=data: p.write_bytes(d))
        return
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise CheckpointError(
                f"tokenizer must be a folder path or have save_pretrained(), got {type(tokenizer).__name__}"
            )
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            tokenizer.save_pretrained(tmp)
            for file in Path(tmp).iterdir():
                if file.is_file():
                    data = file.read_bytes()
                    atomic_write(folder / file.name, lambda p, d=data: p.write_bytes(d))
