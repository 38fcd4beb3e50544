"""``d3llm generate``: decode prompts with any decoder and print the text with NFE, TPF and tokens/s.

``--show-steps`` draws the canvas filling in, block by block (live in a terminal, one frame per step otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys

# flag -> (generate() parameter, type, help); only flags given on the command line are passed on, so every
# decoder keeps its own defaults.
DECODER_FLAGS = {
    "--max-new-tokens": ("max_new_tokens", int, "tokens to generate (the reference's gen_length)"),
    "--block-size": ("block_size", int, "block size (the reference's block_length)"),
    "--steps": ("steps", int, "forward passes of vanilla / block-sequential decoders"),
    "--threshold": ("threshold", float, "entropy (multi_block, block_entropy) or confidence (fast_dllm) threshold"),
    "--temperature": ("temperature", float, "sampling temperature (0 = greedy)"),
    "--remasking": ("remasking", str, "low_confidence or random (LLaDA)"),
    "--cache": ("cache", str, "fast_dllm cache: none, prefix or dual"),
    "--block-add-threshold": ("block_add_threshold", float, "multi_block: progress that opens the next block"),
    "--decoded-token-threshold": ("decoded_token_threshold", float,
                                  "multi_block: progress that fully activates the next block"),
    "--cache-delay-iter": ("cache_delay_iter", int, "multi_block: delay before a finished block is cached"),
    "--refresh-interval": ("refresh_interval", int, "multi_block: refresh the cache every N steps"),
    "--alg": ("alg", str, "Dream vanilla: origin, maskgit_plus, topk_margin or entropy"),
    "--top-p": ("top_p", float, "Dream vanilla: nucleus sampling mass"),
    "--top-k": ("top_k", int, "Dream vanilla: top-k sampling"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with a diffusion LM", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompts", nargs="+", help="one or more prompts (several are decoded as one batch)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped tiny teacher)")
    p.add_argument("--method", default="multi_block",
                   choices=["vanilla", "block_entropy", "fast_dllm", "multi_block"])
    for flag, (_, kind, text) in DECODER_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                   help="multi_block: stop at the first end-of-text")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: as stored)")
    p.add_argument("--show-steps", action="store_true", help="draw the canvas filling in at every step")
    p.add_argument("--json", action="store_true", help="print a JSON record instead of text")
    p.set_defaults(func=run)


def decoder_params(args: argparse.Namespace) -> dict:
    params = {name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, _, _) in DECODER_FLAGS.items()}
    params = {k: v for k, v in params.items() if v is not None}
    if args.early_stop is not None:
        params["early_stop"] = args.early_stop
    return params


def encode_prompts(tokenizer, prompts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt (chat template applied with the generation prompt when ``chat``)."""
    out = []
    for text in prompts:
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                from d3llm.errors import GenerationError

                raise GenerationError("--chat: this model's tokenizer has no chat template")
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


def run(args: argparse.Namespace) -> int:
    import d3llm
    from d3llm.cli.display import CanvasView
    from d3llm.errors import GenerationError

    folder = args.model or _default_model()
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


def _default_model() -> str:
    from d3llm.assets import default_model_path

    return str(default_model_path())
