"""``d3llm.generate``: the one public entry point of every decoder."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable

import torch

from d3llm.decoding.canvas import build_canvas, normalize_prompts
from d3llm.decoding.engine import DecodingEngine
from d3llm.decoding.methods import METHODS, method_class
from d3llm.decoding.result import GenerationResult, StepEvent
from d3llm.errors import GenerationError


def generate(
    model,
    input_ids,
    method: str = "multi_block",
    *,
    attention_mask: torch.Tensor | None = None,
    mask_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    callback: Callable[[StepEvent], None] | None = None,
    **params,
) -> GenerationResult:
    """Decode a batch of prompts with a diffusion LM.

    Args:
        model: a :class:`~d3llm.models.DiffusionLM` (LLaDA or Dream).
        input_ids: a LongTensor ``[B, P]`` (with ``attention_mask`` if it is left-padded) or a list of token-id lists
            of different lengths (left-padded inside).
        method: ``vanilla`` | ``block_entropy`` | ``fast_dllm`` | ``multi_block``. Family rules follow the model
            (e.g. ``vanilla`` on Dream is Dream's timestep-schedule decoder with ``alg``, ``top_p``, ``top_k``).
        mask_id, eos_token_id: default to the model config's ``mask_token_id`` / ``eos_token_id``. The EOS id cuts
            ``result.tokens`` and drives ``early_stop``.
        seed: seeds the sampler (temperature > 0, random remasking) so that results repeat.
        callback: called with a :class:`~d3llm.decoding.result.StepEvent` after every step (streaming, display).
        **params: the method's parameters, with the reference's names and defaults (``steps``, ``max_new_tokens``
            (alias ``gen_length``), ``block_size`` (alias ``block_length``), ``temperature``, ``remasking``,
            ``threshold``, ``cache``, ``block_add_threshold``, ``decoded_token_threshold``, ``cache_delay_iter``,
            ``refresh_interval``, ``early_stop``).

    Bad parameters raise :class:`~d3llm.errors.GenerationError` before any work is done.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise GenerationError(f"unknown method {method!r}{hint}; expected one of {', '.join(METHODS)}")
    cls = method_class(method, model.family)
    resolved = cls.Params.from_kwargs(method, params)
    config = model.config

    mask_id = config.mask_token_id if mask_id is None else mask_id
    if mask_id is None:
        raise GenerationError("the model config has no mask_token_id; pass mask_id=...")
    vocab = config.padded_vocab_size
    for name, value in (("mask_id", mask_id), ("eos_token_id", eos_token_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab):
            raise GenerationError(f"{name}={value!r} is not a token id of this model's vocabulary [0, {vocab})")
    eos_id = config.eos_token_id if eos_token_id is None else eos_token_id
    if eos_id == mask_id:
        raise GenerationError(f"eos_token_id and mask_id are both {mask_id}; they must differ")

    prompts = normalize_prompts(input_ids, attention_mask)
    longest = max(len(p) for p in prompts)
    if longest + resolved.max_new_tokens > config.max_length:
        raise GenerationError(
            f"prompt length {longest} + max_new_tokens {resolved.max_new_tokens} = "
            f"{longest + resolved.max_new_tokens} exceeds the model's maximum length {config.max_length}"
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
        params=dict(vars(resolved)),  # the flat dataclass of scalars: a shallow copy (asdict deep-copies)
    )
