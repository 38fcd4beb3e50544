"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, d3LLM/d3LLM_LLaDA) in plain PyTorch.

A LLaMA-style decoder run **without** a causal mask (SPEC 2.3)::

    h = wte[ids]
    for each block:
        h = h + attn_out(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n)))   with n = attn_norm(h)
        h = h + ff_out(silu(ff_proj(m)) * up_proj(m))                                 with m = ff_norm(h)
    logits = ff_out_head(ln_f(h))          # model.transformer.ff_out: the LM head, untied from wte

Module names reproduce the checkpoint keys exactly (``model.transformer.blocks.{i}.q_proj.weight``, ...). Note the
two different ``ff_out``: ``blocks.{i}.ff_out`` is the MLP down projection, ``transformer.ff_out`` the LM head.
RoPE is computed in fp32 (``rope_full_precision``). Logits need no shift: position i scores token i.
"""

from __future__ import annotations

import torch
from torch import nn

from d3llm.models.base import DiffusionLM, fill_normal_
from d3llm.models.configs import LLaDAConfig
from d3llm.models.layers import AttentionPlan, RMSNorm, attention


class LLaDABlock(nn.Module):
    """One pre-norm transformer block (``block_type "llama"``)."""

    def __init__(self, config: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        d, kv = config.d_model, config.num_kv_heads * config.head_dim
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(config.num_heads * config.head_dim, d, bias=False)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.intermediate_size, bias=False)  # gate branch (SiLU)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=False)  # linear branch
        self.ff_out = nn.Linear(config.intermediate_size, d, bias=False)   # down projection

    def forward(self, h: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        n = self.attn_norm(h)
        a = attention(self.q_proj(n), self.k_proj(n), self.v_proj(n), plan, self.layer_idx, self.num_heads,
                      self.num_kv_heads, rope_full_precision=True)
        h = h + self.attn_out(a)
        m = self.ff_norm(h)
        return h + self.ff_out(nn.functional.silu(self.ff_proj(m)) * self.up_proj(m))


class _Transformer(nn.Module):
    """Holds ``transformer`` so that parameter names start with ``model.transformer.`` as in the checkpoint."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        modules = {
            "wte": nn.Embedding(config.padded_vocab_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.transformer = nn.ModuleDict(modules)


class LLaDALM(DiffusionLM):
    """LLaDA masked-diffusion LM. ``forward`` is documented in :mod:`d3llm.models.base`."""

    family = "llada"
    residual_projections = ("attn_out", "ff_out")

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = _Transformer(config)

    def backbone(self, input_ids: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        t = self.model.transformer
        h = t.wte(input_ids)
        for block in t.blocks:
            h = block(h, plan)
        return t.ln_f(h)

    def head(self, hidden: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        t = self.model.transformer
        weight = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        return nn.functional.linear(hidden, weight)

    def head_at(self, hidden: torch.Tensor, index: torch.Tensor, plan) -> torch.Tensor:
        return self.head(hidden.index_select(0, index), plan)  # no logit shift: position i scores token i

    def init_parameter_(self, name: str, tensor: torch.Tensor, generator: torch.Generator, *, std: float,
                        seed: int | None) -> None:
        # The LM head shares its leaf name ("ff_out") with the MLP output projections but is not a residual
        # projection: it gets plain N(0, std) values from a generator of its own (seed + 1). It is the last
        # parameter, so it leaves the shared generator's stream for the others unchanged.
        if name == "model.transformer.ff_out.weight":
            fill_normal_(tensor, torch.Generator().manual_seed((0 if seed is None else seed) + 1), std)
        else:
            super().init_parameter_(name, tensor, generator, std=std, seed=seed)
