"""The native models against independent implementations (transformers' Llama and Qwen2) on the same weights."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import d3llm
from d3llm.models.configs import named_config
from d3llm.models.random_checkpoint import init_checkpoint

_LLADA_TO_LLAMA = {
    "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj",
}


def llama_from_llada(model: d3llm.LLaDALM) -> LlamaForCausalLM:
    c = model.config
    cfg = LlamaConfig(
        vocab_size=c.padded_vocab_size, hidden_size=c.d_model, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.num_kv_heads,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, max_position_embeddings=c.max_sequence_length,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    renamed = {}
    for key, value in model.state_dict().items():
        if key == "model.transformer.wte.weight":
            renamed["model.embed_tokens.weight"] = value
        elif key == "model.transformer.ln_f.weight":
            renamed["model.norm.weight"] = value
        elif key == "model.transformer.ff_out.weight":
            renamed["lm_head.weight"] = value
        else:
            _, _, _, layer, *leaf, _ = key.split(".")
            renamed[f"model.layers.{layer}.{_LLADA_TO_LLAMA['.'.join(leaf)]}.weight"] = value
    return sharing_weights(LlamaForCausalLM, cfg, renamed)


def qwen2_from_dream(model: d3llm.DreamLM) -> Qwen2ForCausalLM:
    c = model.config
    cfg = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False, use_sliding_window=False,
    )
    return sharing_weights(Qwen2ForCausalLM, cfg, model.state_dict())  # Dream uses the Qwen2 key names verbatim


def sharing_weights(cls, cfg, state: dict):
    """A transformers model built on the meta device whose parameters *are* ``state``'s tensors (no copy, so an
    8B-width model costs no second copy); its rotary buffers, which no state dict holds, are built on the CPU."""
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = cls(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    return model.eval()


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_llada_causal_matches_llama(n_kv_heads):
    model = d3llm.build_model("llada-tiny", n_kv_heads=n_kv_heads, seed=3)
    llama = llama_from_llada(model)
    ids = torch.randint(0, 120, (3, 23))
    with torch.no_grad():
        ours_causal = model(ids, causal=True).logits
        ours_bidirectional = model(ids).logits
        theirs = llama(ids).logits
    assert (ours_causal - theirs).abs().max() < 1e-4
    # LLaDA is bidirectional: without the forced causal mask the logits must differ (all but the last position).
    assert (ours_bidirectional[:, :-1] - theirs[:, :-1]).abs().amax(dim=-1).min() > 1e-3


def test_dream_causal_matches_qwen2_with_shift():
    model = d3llm.build_model("dream-tiny", seed=4)
    qwen = qwen2_from_dream(model)
    ids = torch.randint(0, 120, (3, 19))
    with torch.no_grad():
        ours_causal = model(ids, causal=True).logits
        ours_bidirectional = model(ids).logits
        theirs = qwen(ids).logits
    # Aligned logits: position i is scored by the raw output at i-1 (position 0 by its own output).
    assert (ours_causal[:, 1:] - theirs[:, :-1]).abs().max() < 1e-4
    assert (ours_causal[:, 0] - theirs[:, 0]).abs().max() < 1e-4
    assert (ours_bidirectional[:, 1:-1] - theirs[:, :-2]).abs().amax(dim=-1).min() > 1e-3


def test_dream_padded_batch_matches_qwen2_with_mask():
    """Left padding, as Qwen2 handles it with a 2-D attention mask and causal attention."""
    model = d3llm.build_model("dream-tiny", seed=5)
    qwen = qwen2_from_dream(model)
    ids = torch.randint(0, 120, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, causal=True).logits
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        theirs = qwen(ids, attention_mask=mask, position_ids=position_ids).logits
    assert (ours[0, 1:] - theirs[0, :-1]).abs().max() < 1e-4
    assert (ours[1, 5:] - theirs[1, 4:-1]).abs().max() < 1e-4


REAL_WIDTH = {"llada": ("llada-8b-instruct", {"n_layers": 2}, llama_from_llada),
              "dream": ("dream-7b-instruct", {"num_hidden_layers": 2}, qwen2_from_dream)}


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_real_width_checkpoint_matches_transformers(family, tmp_path):
    """The real widths, head dimension, vocabulary and RoPE settings with 2 layers (about 3 GB): written by
    ``init_checkpoint`` in bf16 with 1 GB shards (the index path), memory-mapped by ``load_model``, and run causally
    against transformers' Llama/Qwen2 on the very same tensors, in float32 (an exact conversion of the stored bf16)
    so that the tolerance is the fp32 one of the tests above."""
    name, layers, independent = REAL_WIDTH[family]
    config = named_config(name, **layers)
    folder = init_checkpoint(config, tmp_path / name, max_shard_size="1GB", seed=1)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    stored = d3llm.load_model(folder)
    assert stored.dtype == torch.bfloat16
    ids = torch.randint(0, config.mask_token_id, (1, 12), generator=torch.Generator().manual_seed(0))
    ids[0, -4:] = config.mask_token_id
    with torch.no_grad():
        ours_bf16 = stored(ids, causal=True).logits.float()
        del stored
        model = d3llm.load_model(folder, dtype=torch.float32)
        ours = model(ids, causal=True).logits
        theirs = independent(model)(ids).logits
    if family == "dream":  # Qwen2's output i scores token i+1; Dream's logits are aligned
        theirs = torch.cat([theirs[:, :1], theirs[:, :-1]], dim=1)
    assert (ours - theirs).abs().max() < 1e-4 * max(1.0, float(theirs.abs().max()))
    # The bf16 model (what a real checkpoint runs in) stays close to its exact float32 widening.
    # The bf16 model (what a real checkpoint runs in) against its exact float32 widening: bf16 keeps 8 significant
    # bits (steps of 2^-8 = 0.4% relative), and every op rounds its output again, so the logits drift by a few
    # steps of the largest one (measured: 1.2% at LLaDA's shape); 5% still catches any wiring error (a wrong RoPE,
    # norm or head layout moves logits by their whole size).
    assert (ours_bf16 - ours).abs().max() < 0.05 * float(ours.abs().max())
