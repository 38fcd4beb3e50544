"""LoRA for distillation through ``peft``, merged into a plain model of the public layout on save.

Targets are module names: the reference's list (``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``)
matches only ``q_proj, k_proj, v_proj, up_proj`` on LLaDA, whose other linears are ``attn_out``, ``ff_proj`` and
``ff_out`` (SPEC 7.6); the LM head ``model.transformer.ff_out`` is never adapted (an exact ``blocks.N.`` match is
required). Checkpoints keep the adapter tensors (``extra.safetensors``) so that ``--resume`` continues exactly;
``merged_copy`` folds ``B @ A * alpha / r`` into the base weights of a copy.
"""

from __future__ import annotations

import copy
import re

import torch

from d3llm.errors import ConfigError


def _require_peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigError("--lora needs the peft package: pip install 'd3llm[distill]'") from None
    return peft


def lora_target_regex(names) -> str:
    """A regex over full module names matching block linears called one of ``names`` (never the LM head)."""
    return r".*\.(blocks|layers)\.\d+\.(?:self_attn\.|mlp\.)?(" + "|".join(map(re.escape, names)) + r")$"


def wrap_lora(model, targets, r: int, alpha: float):
    """A ``peft`` model adapting the named linears of ``model`` (rank ``r``, scale ``alpha / r``, no dropout, no
    bias); only the adapters train. Raises ConfigError when no module matches."""
    peft = _require_peft()
    pattern = lora_target_regex(targets)
    if not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        raise ConfigError(f"no module of this {model.family} model is called one of {', '.join(targets)}")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=pattern)
    wrapped = peft.get_peft_model(model, config)
    wrapped.family = model.family
    return wrapped


def merged_copy(peft_model):
    """A plain model (LLaDALM / DreamLM) with the adapters merged into a copy of the base weights."""
    return copy.deepcopy(peft_model).merge_and_unload()


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    peft = _require_peft()
    return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    peft = _require_peft()
    result = peft.set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(f"the checkpoint's LoRA adapters do not fit this model: unexpected {unexpected[:3]}")
