"""Command-line flags of the decoders, shared by ``d3llm generate`` and ``d3llm eval``.

Only flags given on the command line are passed on, so every decoder keeps its own defaults.
"""

from __future__ import annotations

import argparse

METHODS = ["vanilla", "block_entropy", "fast_dllm", "multi_block"]

# flag -> (generate() parameter, type, help)
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


def add_decoder_flags(parser: argparse.ArgumentParser, default_method: str = "multi_block") -> None:
    parser.add_argument("--method", default=default_method, choices=METHODS)
    for flag, (_, kind, text) in DECODER_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                        help="multi_block: stop at the first end-of-text")
    parser.add_argument("--reference-exact", action="store_true", default=None,
                        help="multi_block: reproduce the reference's cache-branch order exactly")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder (default: the shipped tiny teacher)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: as stored)")


def decoder_params(args: argparse.Namespace) -> dict:
    """The decoder parameters given on the command line."""
    params = {name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, _, _) in DECODER_FLAGS.items()}
    params = {k: v for k, v in params.items() if v is not None}
    for name in ("early_stop", "reference_exact"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params


def model_folder(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from d3llm.assets import default_model_path

    return str(default_model_path())
