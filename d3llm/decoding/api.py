"""``d3llm.generate``: the one public entry point of every decoder, a thin client of :class:`~d3llm.Engine`.

``d3llm generate`` and every other command that decodes through it pass here, so this is where a canvas longer than
the model folder declares its training used (``max_trained_new_tokens`` in ``generation_config.json``) is warned
about: one :class:`LengthBeyondTrainingWarning` per process.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from d3llm.decoding.canvas import normalize_prompts
from d3llm.decoding.engine import Engine, too_long_message
from d3llm.decoding.result import GenerationResult, StepEvent
from d3llm.errors import GenerationError
from d3llm.models.generation_config import beyond_training_message


class LengthBeyondTrainingWarning(UserWarning):
    """A decode asks for more new tokens than the model folder says its training used (``max_trained_new_tokens``):
    it runs, but answers may degrade. Issued once per process."""


_warned_beyond_training = False  # this process has warned (LengthBeyondTrainingWarning is issued once)


def warn_beyond_training(model, canvas: int, stacklevel: int = 3) -> bool:
    """Warn (once per process) when ``canvas`` new tokens exceed the ``max_trained_new_tokens`` of ``model``'s
    ``generation_config.json``; True when this call warned."""
    global _warned_beyond_training
    config = getattr(model, "generation_config", None)
    trained = config.max_trained_new_tokens if config is not None else None
    if _warned_beyond_training or trained is None or canvas <= trained:
        return False
    _warned_beyond_training = True
    warnings.warn(beyond_training_message(trained, canvas, config.source, " (max_new_tokens)"),
                  LengthBeyondTrainingWarning, stacklevel=stacklevel)
    return True


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
        input_ids: a LongTensor ``[B, P]`` (with ``attention_mask`` if it is padded), a list of token-id lists of
            different lengths, or what a tokenizer returns (a ``BatchEncoding`` or dict with ``input_ids`` and
            ``attention_mask``, e.g. ``tokenizer.apply_chat_template(..., return_dict=True)``).
        method: ``vanilla`` | ``block_entropy`` | ``fast_dllm`` | ``multi_block`` | ``eb_sampler`` |
            ``fast_dllm_factor`` | ``hierarchy`` | ``local_leap`` | ``credit`` | ``klass`` | ``adablock`` (diffusion decoders, for
            LLaDA and Dream; ``klass`` and ``adablock`` for LLaDA) or ``autoregressive`` (one token per forward with the KV cache, for the causal Llama family);
            None = the model folder's ``generation_config.json`` method, else ``multi_block`` (``autoregressive``
            for a causal model). Family rules follow the model (e.g. ``vanilla`` on Dream is Dream's
            timestep-schedule decoder with ``alg``, ``top_p``, ``top_k``).
        mask_id: defaults to the model config's ``mask_token_id``.
        eos_token_id: defaults to the folder's ``generation_config.json``, else ``config.json``. It cuts
            ``result.tokens`` and drives ``early_stop``.
        seed: seeds the sampler (temperature > 0, random remasking) so that results repeat; every row gets its own
            generator seeded with it, so a row samples what it samples alone.
        callback: called with a :class:`~d3llm.decoding.result.StepEvent` after every step (streaming, display).
        **params: the method's parameters, with the reference's names (``steps``, ``max_new_tokens`` (alias
            ``gen_length``), ``block_size`` (alias ``block_length``), ``temperature``, ``remasking``, ``threshold``,
            ``cache``, ``block_add_threshold``, ``decoded_token_threshold``, ``cache_delay_iter``,
            ``refresh_interval``, ``early_stop``). A parameter not given takes the model folder's default
            (``generation_config.json``), else the method's built-in default (the reference's); ``steps`` follows
            ``max_new_tokens`` (one token per forward) unless set.

    Every row is a request of one :class:`~d3llm.Engine`; the batch decodes together and each row leaves it when it
    finishes. Bad parameters, prompts or ids raise :class:`~d3llm.errors.GenerationError` before any work is done.
    ``max_new_tokens`` beyond the ``max_trained_new_tokens`` the model folder declares is decoded all the same, with
    one :class:`LengthBeyondTrainingWarning` per process.
    """
    t0 = time.perf_counter()
    engine = Engine(model, method, mask_id=mask_id, eos_token_id=eos_token_id, **params)
    prompts = normalize_prompts(input_ids, attention_mask)
    limit = model.config.max_length
    too_long = [i for i, p in enumerate(prompts) if len(p) + engine.params.max_new_tokens > limit]
    if too_long:
        i = too_long[0]
        raise GenerationError(too_long_message(i, len(prompts[i]), engine.params, limit, len(too_long) - 1))
    warn_beyond_training(model, engine.params.max_new_tokens)
    for i, prompt in enumerate(prompts):
        engine.add_request(prompt, request_id=i, seed=seed)
    outputs = {}
    width = max(len(p) for p in prompts)
    config = model.config
    pad_id = next(i for i in (config.pad_token_id, engine.eos_id, 0, 1) if i is not None and i != engine.mask_id)
    while engine.has_work:
        for event in engine.step():
            if event.finished:
                outputs[event.request_id] = event.output
        if callback is not None and engine.num_active:
            callback(_step_event(engine, width, pad_id))

    n = engine.params.max_new_tokens
    sequences = np.full((len(prompts), width + n), pad_id, dtype=np.int64)
    nfe = np.zeros(len(prompts), dtype=np.int64)
    positions = np.zeros(len(prompts), dtype=np.int64)
    commit_step = np.zeros((len(prompts), n), dtype=np.int64)
    for i, prompt in enumerate(prompts):
        out = outputs[i]
        sequences[i, width - len(prompt) : width] = prompt
        sequences[i, width:] = out.generated
        nfe[i], commit_step[i], positions[i] = out.nfe, out.commit_step, out.positions
    return GenerationResult(
        sequences=torch.from_numpy(sequences),
        prompt_lengths=torch.tensor([len(p) for p in prompts]),
        nfe=torch.from_numpy(nfe),
        positions=torch.from_numpy(positions),
        commit_step=torch.from_numpy(commit_step),
        tokens=[outputs[i].tokens for i in range(len(prompts))],
        wall_time=time.perf_counter() - t0,
        model_time=engine.stats.model_time,
        method=engine.method_name,
        params=engine.params.as_dict(),
    )


def _step_event(engine: Engine, width: int, pad_id: int) -> StepEvent:
    """The step's canvases of the rows that decoded in it, left-padded so generation starts at column ``width``."""
    canvas, commit = engine.canvas, engine.last_commit
    n, length = canvas.size, width + canvas.max_gen_length
    x = np.full((n, length), pad_id, dtype=np.int64)
    committed = np.zeros((n, length), dtype=bool)
    shift = width - canvas.prompt_lengths
    for i in range(n):
        end = int(canvas.lengths[i])
        x[i, shift[i] : shift[i] + end] = canvas.x[i, :end]
        cols = commit.positions[i][commit.transfer[i]] + shift[i]
        committed[i, cols] = True
    return StepEvent(step=int(engine.rows.nfe.max()) - 1, rows=list(engine.active_ids), canvas=x, committed=committed,
                     gen_start=width, block_size=getattr(engine.params, "block_size", None))
