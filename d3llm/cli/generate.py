"""``d3llm generate``: decode prompts with any decoder and print the text with NFE, TPF and tokens/s.

``--show-steps`` draws the canvas filling in, block by block (live in a terminal, one frame per step otherwise).
"""

from __future__ import annotations

import argparse
import json

from d3llm.cli.options import add_decoder_flags, add_model_flags, decoder_params, model_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with a diffusion LM", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompts", nargs="+", help="one or more prompts (several are decoded as one batch)")
    add_model_flags(p)
    add_decoder_flags(p)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--show-steps", action="store_true", help="draw the canvas filling in at every step")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of text")
    p.set_defaults(func=run)


def encode_prompts(tokenizer, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt (chat template applied with the generation prompt when ``chat``)."""
    if not chat:
        return [tokenizer.encode(text, add_special_tokens=False) for text in prompts]
    if not getattr(tokenizer, "chat_template", None):
        from d3llm.errors import GenerationError

        raise GenerationError("--chat: this model's tokenizer has no chat template")
    from d3llm.models.prompts import encode_prompt

    return [encode_prompt(tokenizer, text) for text in prompts]


def run(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.cli.display import CanvasView
    from d3llm.errors import GenerationError

    folder = model_folder(args)
    model = d3llm.load_model(folder, device=args.device, dtype=args.dtype)
    tokenizer = d3llm.load_tokenizer(folder)
    ids = encode_prompts(tokenizer, args.prompts, args.chat)
    if not all(ids):
        raise GenerationError("a prompt encodes to no tokens")
    params = decoder_params(args)
    view = CanvasView(tokenizer, model.mask_token_id, model.eos_token_id) if args.show_steps else None
    try:
        result = d3llm.generate(model, ids, args.method, seed=args.seed, callback=view, **params)
    finally:
        if view is not None:
            view.close()
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.tokens]
    figures = {
        "nfe": result.nfe.tolist(), "tokens": result.num_tokens.tolist(),
        "tpf": round(result.tokens_per_forward, 3), "tokens_per_s": round(result.tokens_per_second, 1),
        "wall_s": round(result.wall_time, 4), "model_s": round(result.model_time, 4),
    }
    if args.json:
        print(json.dumps({"texts": texts, "method": args.method, "params": result.params, **figures}))
        return 0
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- {i}")
        print(text)
    print(f"[{args.method}] NFE {sum(figures['nfe'])}  tokens {sum(figures['tokens'])}  TPF {figures['tpf']}  "
          f"{figures['tokens_per_s']} tokens/s  ({figures['wall_s']} s, model {figures['model_s']} s)")
    return 0
