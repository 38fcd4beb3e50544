"""Dream (Dream-org/Dream-v0-Instruct-7B, d3LLM/d3LLM_Dream) in plain PyTorch.

A Qwen2 decoder run **without** a causal mask (SPEC 2.5): the layers of :mod:`d3llm.models.llama_style` with
q/k/v biases (o_proj has none) and grouped key/value heads. Module names reproduce the checkpoint keys
(``model.layers.{i}.self_attn.q_proj.weight``, ``lm_head.weight``, ...).

Dream was initialised from an autoregressive model, so its raw output at position i predicts token i+1; the model
returns aligned logits (position i scores token i), shifted inside :meth:`~d3llm.models.llama_style.LlamaStyleLM.head`.
"""

from __future__ import annotations

from d3llm.models.llama_style import LlamaStyleLM


class DreamLM(LlamaStyleLM):
    """Dream masked-diffusion LM with aligned logits. ``forward`` is documented in :mod:`d3llm.models.base`."""

    family = "dream"
