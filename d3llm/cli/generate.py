"""d3llm generate: decode prompts with any decoder and print the text with NFE, TPF and tokens/s.

    d3llm generate --chat "Mia has 58 cards. ..."          # the shipped teacher, its own decoding defaults
    echo "Mia has 58 cards. ..." | d3llm generate --chat -  # '-' reads the prompt from standard input
    d3llm generate --model DIR --method fast_dllm --threshold 0.9 --cache dual "..."

--show-steps draws the canvas filling in, block by block (live in a terminal, one frame per step otherwise).
Several prompts are decoded as one batch.
"""

from __future__ import annotations

import argparse
import json

from d3llm.cli.options import (add_decoder_flags, add_model_flags, add_parser, apply_threads, decoder_params,
                               model_folder, read_prompts)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "generate", "generate text with a diffusion LM (or the AR baseline)", __doc__)
    p.add_argument("prompts", nargs="+", help="one or more prompts; '-' reads one from standard input")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--show-steps", action="store_true", help="draw the canvas filling in at every step")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of text")
    add_model_flags(p)
    add_decoder_flags(p)
    p.set_defaults(func=run)


def encode_prompts(tokenizer, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt (chat template applied with the generation prompt when ``chat``)."""
    from d3llm.errors import GenerationError
    from d3llm.models.prompts import encode_prompt, encode_text

    if chat and not getattr(tokenizer, "chat_template", None):
        raise GenerationError("--chat: this model's tokenizer has no chat template")
    for i, text in enumerate(prompts):  # one rule with and without --chat: a prompt has text
        if not text.strip():
            raise GenerationError(f"prompt {i} is empty ({text!r}); give the text to continue or, with --chat, the "
                                  f"question to answer")
    ids = [encode_prompt(tokenizer, t) if chat else encode_text(tokenizer, t) for t in prompts]
    for i, row in enumerate(ids):
        if not row:
            raise GenerationError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens")
    return ids


def warn_if_chat_model(tokenizer, chat: bool) -> None:
    """A chat model given raw text (no ``--chat``) continues the text instead of answering it, which looks like junk:
    say so once, with the flag that fixes it."""
    import warnings

    if not chat and getattr(tokenizer, "chat_template", None):
        warnings.warn("this model has a chat template, and the prompt was given as raw text to continue; to ask it a "
                      "question, pass --chat (the prompt is then wrapped in the chat template, as in training)",
                      stacklevel=2)


def run(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.cli.display import CanvasView
    from d3llm.decoding.defaults import with_tokenizer_defaults

    folder = model_folder(args)
    prompts = read_prompts(args.prompts)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)
    apply_threads(args.threads, model)
    tokenizer = d3llm.load_tokenizer(folder)
    ids = encode_prompts(tokenizer, prompts, args.chat)
    warn_if_chat_model(tokenizer, args.chat)
    view = CanvasView(tokenizer, model.mask_token_id, model.eos_token_id) if args.show_steps else None
    try:
        params = with_tokenizer_defaults(model, args.method, decoder_params(args), tokenizer)
        result = d3llm.generate(model, ids, args.method, seed=args.seed, callback=view, **params)
    finally:
        if view is not None:
            view.close()
    texts = result.texts(tokenizer)
    figures = {
        "nfe": result.nfe.tolist(), "tokens": result.num_tokens.tolist(),
        "tpf": round(result.tokens_per_forward, 3), "positions_per_token": round(result.positions_per_token, 2),
        "tokens_per_s": round(result.tokens_per_second, 1),
        "wall_s": round(result.wall_time, 4), "model_s": round(result.model_time, 4),
    }
    if args.json:
        print(json.dumps({"texts": texts, "method": result.method, "params": result.params, **figures}))
        return 0
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- {i}")
        print(text)
    print(f"[{result.method}] NFE {sum(figures['nfe'])}  tokens {sum(figures['tokens'])}  TPF {figures['tpf']}  "
          f"positions/token {figures['positions_per_token']}  {figures['tokens_per_s']} tokens/s  "
          f"({figures['wall_s']} s, model {figures['model_s']} s)")
    return 0
