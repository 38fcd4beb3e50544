"""Llama (transformers' ``LlamaForCausalLM`` layout): the causal, autoregressive family.

The layers of :mod:`d3llm.models.llama_style` without biases, run **with** a causal mask in every forward: LLaDA's
maths (RMSNorm, rotate-half RoPE, SwiGLU) with transformers' key names (``model.layers.{i}.self_attn.q_proj.weight``,
``model.norm.weight``, ``lm_head.weight``), so ``LlamaForCausalLM.from_pretrained`` loads a saved folder as it is.
The usual next-token shift is handled once, inside the model, as Dream's is: position i scores token i (from the
raw output at i - 1), so the trainer's loss and the decoders read logits the same way for every family.

Decoding: the ``autoregressive`` method (one token per forward with the KV cache); diffusion decoders refuse a
causal model.
"""

from __future__ import annotations

from d3llm.models.llama_style import LlamaStyleLM


class LlamaLM(LlamaStyleLM):
    """Causal Llama LM with aligned logits. ``forward`` is documented in :mod:`d3llm.models.base`."""

    family = "llama"
    causal = True
