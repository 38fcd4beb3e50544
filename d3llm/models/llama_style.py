"""The Llama decoder with transformers' key names, shared by Dream (Qwen2: q/k/v biases, bidirectional) and Llama
(no biases, causal)::

    h = embed_tokens[ids]
    for each layer:
        h = h + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n)))   n = input_layernorm(h)
        h = h + down_proj(silu(gate_proj(m)) * up_proj(m))                         m = post_attention_layernorm(h)
    out = lm_head(norm(h))

Module names reproduce the checkpoint keys (``model.layers.{i}.self_attn.q_proj.weight``, ``lm_head.weight``, ...);
key/value heads may be grouped (GQA). RoPE is applied in the activations' dtype, as transformers does.

**Logit shift, handled here and nowhere else.** Both families' raw output at position i predicts token i+1 (Dream
was initialised from an autoregressive model). :meth:`LlamaStyleLM.head` returns aligned logits, ``logits[i] =
out[i-1]`` for i >= 1 and ``logits[0] = out[0]`` (position 0 is never a target), so that position i scores token i
as for LLaDA. In a left-padded row the first real token (rotary position 0) likewise keeps its own output, so a
padded row gets the logits it gets alone. The shift is applied within the forwarded slice: for a cached slice
starting at s > 0 its first position is scored by its own output (the reference decoders' behaviour). A caller that
wants the left neighbour's output there forwards from s - 1.
"""

from __future__ import annotations

import torch
from torch import nn

from d3llm.models.base import DiffusionLM
from d3llm.models.configs import DreamConfig, LlamaConfig
from d3llm.models.layers import AttentionPlan, RMSNorm, attention


class SelfAttention(nn.Module):
    def __init__(self, config: DreamConfig | LlamaConfig) -> None:
        super().__init__()
        d, hd, bias = config.hidden_size, config.head_dim, config.qkv_bias
        self.q_proj = nn.Linear(d, config.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, config.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, config.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * hd, d, bias=False)


class MLP(nn.Module):
    def __init__(self, config: DreamConfig | LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig | LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        n = self.input_layernorm(h)
        sa = self.self_attn
        a = attention(sa.q_proj(n), sa.k_proj(n), sa.v_proj(n), plan, self.layer_idx, self.num_heads,
                      self.num_kv_heads, rope_full_precision=False)
        h = h + sa.o_proj(a)
        return h + self.mlp(self.post_attention_layernorm(h))


class _Backbone(nn.Module):
    def __init__(self, config: DreamConfig | LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaStyleLM(DiffusionLM):
    """Backbone and shifted head of the transformers-layout families (see the module docstring)."""

    residual_projections = ("o_proj", "down_proj")

    def __init__(self, config: DreamConfig | LlamaConfig) -> None:
        super().__init__(config)
        self.model = _Backbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def backbone(self, input_ids: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h, plan)
        return self.model.norm(h)

    def head(self, hidden: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        # Shift before the projection (cheaper than shifting [B, T, V] logits): position i gets out[i-1]; the
        # slice's first position and each row's first real token (rotary position 0, after left padding) keep
        # their own output.
        shifted = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        shifted = torch.where((plan.positions == 0)[..., None], hidden, shifted)
        return nn.functional.linear(shifted, self._lm_weight())

    def head_at(self, hidden: torch.Tensor, index: torch.Tensor, plan) -> torch.Tensor:
        # the same shift in a packed forward: each row's first forwarded token and position 0 keep their own output
        source = torch.where(plan.opens[index], index, index - 1)
        return nn.functional.linear(hidden.index_select(0, source), self._lm_weight())

    def _lm_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
