"""``d3llm.generate``: the one public entry point of every decoder."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from d3llm.decoding.canvas import build_canvas, normalize_prompts
from d3llm.decoding.engine import DecodingEngine
from d3llm.decoding.defaults import resolve_decoder, resolve_eos
from d3llm.decoding.result import GenerationResult, StepEvent
from d3llm.errors import GenerationError


def generate(
    model,
    input_ids,
    method: str | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    mask_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    **params,
) -> GenerationResult:
    """Decode a batch of prompts with a diffusion LM (or a causal LM, with ``method="autoregressive"``).

    Args:
        model: a :class:`~d3llm.models.DiffusionLM` (LLaDA or Dream).
        input_ids: a LongTensor ``[B, P]`` (with ``attention_mask`` if it is left-padded), a list of token-id lists
            of different lengths (left-padded inside), or what a tokenizer returns (a ``BatchEncoding`` or dict with
            ``input_ids`` and ``attention_mask``, e.g. ``tokenizer.apply_chat_template(..., return_dict=True)``).
        method: ``vanilla`` | ``block_entropy`` | ``fast_dllm`` | ``multi_block`` (diffusion decoders, for LLaDA and
            Dream) or ``autoregressive`` (one token per forward with the KV cache, for the causal Llama family);
            None = the model folder's ``generation_config.json`` method, else ``multi_block`` (``autoregressive``
            for a causal model). Family rules follow the model (e.g. ``vanilla`` on Dream is Dream's
            timestep-schedule decoder with ``alg``, ``top_p``, ``top_k``).
        mask_id: defaults to the model config's ``mask_token_id``.
        eos_token_id: defaults to the folder's ``generation_config.json``, else ``config.json``. It cuts
            ``result.tokens`` and drives ``early_stop``.
        seed: seeds the sampler (temperature > 0, random remasking) so that results repeat.
        callback: called with a :class:`~d3llm.decoding.result.StepEvent` after every step (streaming, display).
        **params: the method's parameters, with the reference's names (``steps``, ``max_new_tokens`` (alias
            ``gen_length``), ``block_size`` (alias ``block_length``), ``temperature``, ``remasking``, ``threshold``,
            ``cache``, ``block_add_threshold``, ``decoded_token_threshold``, ``cache_delay_iter``,
            ``refresh_interval``, ``early_stop``). A parameter not given takes the model folder's default
            (``generation_config.json``), else the method's built-in default (the reference's); ``steps`` follows
            ``max_new_tokens`` (one token per forward) unless set.

    Bad parameters raise :class:`~d3llm.errors.GenerationError` before any work is done.
    """
    t0 = time.perf_counter()
    method, cls, resolved = resolve_decoder(model, method, params)
    config = model.config

    mask_id = config.mask_token_id if mask_id is None else mask_id
    if mask_id is None:
        raise GenerationError("the model config has no mask_token_id; pass mask_id=...")
    vocab = config.padded_vocab_size
    for name, value in (("mask_id", mask_id), ("eos_token_id", eos_token_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab):
            raise GenerationError(f"{name}={value!r} is not a token id of this model's vocabulary [0, {vocab})")
    eos_id = resolve_eos(model, eos_token_id)
    if eos_id == mask_id:
        raise GenerationError(f"eos_token_id and mask_id are both {mask_id}; they must differ")

    prompts = normalize_prompts(input_ids, attention_mask)
    room = config.max_length - resolved.max_new_tokens
    too_long = [i for i, p in enumerate(prompts) if len(p) > room]
    if too_long:
        i = too_long[0]
        others = f" (and {len(too_long) - 1} more prompt(s))" if len(too_long) > 1 else ""
        raise GenerationError(
            f"prompt {i} has {len(prompts[i])} tokens; with {resolved.show('max_new_tokens')} that is "
            f"{len(prompts[i]) + resolved.max_new_tokens}, more than the model's maximum length {config.max_length}"
            f"{others}; shorten the prompt to at most {max(room, 0)} tokens or lower max_new_tokens"
        )
    pad_id = next(i for i in (config.pad_token_id, eos_id, 0, 1) if i is not None and i != mask_id)
    device = model.device
    canvas = build_canvas(prompts, resolved.max_new_tokens, mask_id=mask_id, pad_id=pad_id, vocab_size=vocab,
                          device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    decoder = cls(resolved, family=model.family, mask_id=mask_id, eos_id=eos_id, generator=generator)
    engine = DecodingEngine(model, decoder, canvas, callback=callback)
    with torch.inference_mode():
        sequences, nfe, commit_step = engine.run()

    generated = sequences[:, canvas.gen_start:].tolist()
    tokens = [row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row for row in generated]
    return GenerationResult(
        sequences=torch.from_numpy(sequences),
        prompt_lengths=torch.from_numpy(canvas.prompt_lengths),
        nfe=torch.from_numpy(nfe),
        commit_step=torch.from_numpy(commit_step),
        tokens=tokens,
        wall_time=time.perf_counter() - t0,
        model_time=engine.model_time,
        method=method,
        params=resolved.as_dict(),
    )

