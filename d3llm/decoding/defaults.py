"""Where a decoder's settings come from: the caller, then the model folder's ``generation_config.json``, then the
method's built-in defaults (see :mod:`d3llm.decoding.params` and :mod:`d3llm.models.generation_config`).

``d3llm.generate``, every CLI command, evaluation, trajectory extraction and the server resolve their decoder
through :func:`resolve_decoder`, so a model folder decodes the same way whichever entry point drives it.
"""

from __future__ import annotations

from typing import Any

from d3llm.decoding.methods import METHODS, method_class
from d3llm.decoding.params import Params
from d3llm.errors import GenerationError, did_you_mean

DEFAULT_METHOD = "multi_block"  # when neither the caller nor the model folder names one
CAUSAL_DEFAULT_METHOD = "autoregressive"  # the same, for a causal model


def resolve_method(model, method: str | None) -> str:
    """The caller's method, else the folder's ``method``, else :data:`DEFAULT_METHOD` (:data:`CAUSAL_DEFAULT_METHOD`
    for a causal model); unknown names are an error with a suggestion."""
    if method is None:
        config = getattr(model, "generation_config", None)
        fallback = CAUSAL_DEFAULT_METHOD if getattr(model, "causal", False) else DEFAULT_METHOD
        method = (config.method if config is not None else None) or fallback
    if method not in METHODS:
        hint = did_you_mean(method, METHODS)
        raise GenerationError(f"unknown method {method!r}{hint}; expected one of {', '.join(METHODS)}")
    return method


def folder_defaults(model, method: str) -> tuple[dict[str, Any], str]:
    """The model folder's defaults for ``method`` and how messages name their source."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}, "the model folder"
    return config.defaults_for(method), config.source


def resolve_decoder(model, method: str | None, params: dict[str, Any]) -> tuple[str, type, Params]:
    """``(method name, method class for the model's family, resolved and validated parameters)``."""
    method = resolve_method(model, method)
    cls = method_class(method, model.family)
    check_family(method, cls, model)
    defaults, source = folder_defaults(model, method)
    return method, cls, cls.Params.from_kwargs(method, params, defaults, source)


def with_tokenizer_defaults(model, method: str | None, params: dict[str, Any], tokenizer) -> dict[str, Any]:
    """``params`` plus the decoder parameters that come from the tokenizer when neither the caller nor the model
    folder sets them: ``adablock``'s ``delimiter_ids`` (the tokenizer's newline). Entry points that hold a tokenizer
    (``d3llm generate``/``eval``/``sweep``/``leaderboard``, evaluation) call this before resolving."""
    if tokenizer is None or resolve_method(model, method) != "adablock" or params.get("delimiter_ids") is not None:
        return params
    if folder_defaults(model, "adablock")[0].get("delimiter_ids") is not None:
        return params
    from d3llm.decoding.methods.adablock import delimiter_ids_from

    return {**params, "delimiter_ids": list(delimiter_ids_from(tokenizer))}


def check_family(method: str, cls, model) -> None:
    """Diffusion methods need a bidirectional model, ``autoregressive`` a causal one: say which, and what to use."""
    causal = bool(getattr(model, "causal", False))
    if cls.causal == causal:
        return
    diffusion = ", ".join(name for name, m in METHODS.items() if not m.causal)
    if causal:
        raise GenerationError(
            f"method '{method}' is a diffusion decoder and needs a bidirectional model (the LLaDA or Dream family); "
            f"this {model.family} model is causal (autoregressive): use method='autoregressive'"
        )
    raise GenerationError(
        f"method '{method}' needs a causal (autoregressive) model such as the Llama family; this {model.family} model "
        f"is a bidirectional diffusion LM: use one of {diffusion}"
    )


def resolve_eos(model, eos_token_id: int | None) -> int | None:
    """The caller's end-of-text id, else the folder's ``generation_config.json``, else ``config.json``'s."""
    if eos_token_id is not None:
        return eos_token_id
    config = getattr(model, "generation_config", None)
    if config is not None and config.eos_token_id is not None:
        return config.eos_token_id
    return model.config.eos_token_id
