"""Command-line flags shared by the commands: the model, the decoder, threads, prompts and output files.

Only decoder flags given on the command line are passed on, so everything else comes from the model folder's
``generation_config.json`` and then the method's built-in defaults, exactly as for ``d3llm.generate``.
This module imports no torch: ``d3llm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# d3llm.decoding.METHODS (a test keeps them equal)
METHODS = ["vanilla", "block_entropy", "fast_dllm", "multi_block", "eb_sampler", "fast_dllm_factor", "hierarchy",
           "local_leap", "credit", "klass", "adablock", "autoregressive"]
EVAL_BATCH_SIZE = 8  # prompts decoded together by d3llm eval (and by d3llm lm-eval's d3llm model; lm-eval's is 1)
DEFAULTS_NOTE = ("flags not given take the model folder's generation_config.json defaults (d3llm info shows them), "
                 "else the method's built-in defaults")

# flag -> (generate() parameter, type, help)
DECODER_FLAGS = {
    "--max-new-tokens": ("max_new_tokens", int, ("the most new tokens to generate, the canvas (the reference's "
                                                 "gen_length): the text ends at the first end-of-text and nothing "
                                                 "after it is kept; a block decoder needs a multiple of "
                                                 "--block-size")),
    "--block-size": ("block_size", int, "block size (the reference's block_length)"),
    "--steps": ("steps", int, "forwards of the block-sequential decoders (unset: one token per forward)"),
    "--threshold": ("threshold", float, "entropy (multi_block, block_entropy), confidence (fast_dllm, hierarchy, "
                    "local_leap, credit, klass, adablock) threshold, or entropy budget (eb_sampler)"),
    "--factor": ("factor", float, "fast_dllm_factor: f of the factor rule (k + 1)(1 - c_k) <= f"),
    "--low-threshold": ("low_threshold", float, "hierarchy: confidence a masked run's best candidate needs"),
    "--relaxed-threshold": ("relaxed_threshold", float, "local_leap: confidence an anchor's neighbour needs"),
    "--radius": ("radius", int, "local_leap: neighbourhood of an anchor, in positions"),
    "--credit-alpha": ("credit_alpha", float, "credit: weight of log(1 + credit) in the fused logits"),
    "--boost-gamma": ("boost_gamma", float, "credit: exponent of the top-1 probability added as credit"),
    "--decay-beta": ("decay_beta", float, "credit: credit kept from one step to the next"),
    "--kl-threshold": ("kl_threshold", float, "klass: KL divergence (nats) below which a position is stable"),
    "--kl-history": ("kl_history", int, "klass: consecutive stable steps a position needs"),
    "--temperature": ("temperature", float, "sampling temperature (0 = greedy)"),
    "--remasking": ("remasking", str, "low_confidence or random (LLaDA)"),
    "--cache": ("cache", str, "fast_dllm (and its zoo rules) cache: none, prefix or dual"),
    "--block-add-threshold": ("block_add_threshold", float, "multi_block: progress that opens the next block"),
    "--decoded-token-threshold": ("decoded_token_threshold", float,
                                  "multi_block: progress that fully activates the next block"),
    "--cache-delay-iter": ("cache_delay_iter", int, "multi_block: iterations before a finished block is cached"),
    "--commit-rule": ("commit_rule", str, "multi_block: entropy (per-token --threshold) or budget (EB-Sampler: "
                                          "--threshold is the step's entropy budget)"),
    "--refresh-interval": ("refresh_interval", int, "multi_block: refresh the cache every N iterations"),
    "--suffix-refresh-interval": ("suffix_refresh_interval", int,
                                  "multi_block --suffix-cache: recompute the masked tail every N iterations"),
    "--early-exit": ("early_exit", str, "any diffusion method: stop once sure, filling every mask left: prophet "
                                        "(mean logit gap over the step's masks or --exit-answer-start's region) or "
                                        "sched (over every mask of the generation)"),
    "--exit-schedule": ("exit_schedule", str, "early exit threshold over progress: step (prophet), linear or "
                                              "cosine (sched)"),
    "--exit-high": ("exit_high", float, "early exit: logit gap needed at the start (default 7.5)"),
    "--exit-low": ("exit_low", float, "early exit: logit gap needed at the end (default 2.5)"),
    "--exit-answer-start": ("exit_answer_start", int, "prophet: first generated position of the answer region"),
    "--exit-answer-length": ("exit_answer_length", int, "prophet: answer region length (default 5)"),
    "--delimiter-ids": ("delimiter_ids", lambda text: token_ids(text, "--delimiter-ids"),
                        "adablock: comma-separated token ids that end a block (default: the tokenizer's newline)"),
    "--delimiter-threshold": ("delimiter_threshold", float,
                              "adablock: confidence a delimiter needs to end a block (default 0.3)"),
    "--alg": ("alg", str, "Dream vanilla: origin, maskgit_plus, topk_margin or entropy"),
    "--top-p": ("top_p", float, "Dream vanilla: nucleus sampling mass"),
    "--top-k": ("top_k", int, "Dream vanilla: top-k sampling"),
}


class Parser(argparse.ArgumentParser):
    """argparse with a suggestion for a mistyped choice (a command, ``--method``, ...): ``invalid choice: 'multiblock'
    (did you mean 'multi_block'?)``. Subcommand parsers inherit the class."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            from d3llm.errors import did_you_mean

            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} (choose from {choices})")


def token_ids(text: str, flag: str) -> list[int]:
    """Comma-separated token ids (``--delimiter-ids 7,43``)."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} must be comma-separated token ids, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"{flag} is empty")
    return ids


def plain(doc: str | None) -> str:
    """A module docstring as help text: reStructuredText markup removed (``x`` and :func:`x` become x)."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc or "")
    return re.sub(r"``([^`]+)``", r"\1", text)


def add_parser(sub: argparse._SubParsersAction, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand parser whose description is the module docstring in plain text."""
    return sub.add_parser(name, help=help, description=plain(doc), formatter_class=argparse.RawDescriptionHelpFormatter)


def add_decoder_flags(parser: argparse.ArgumentParser, method_flag: bool = True, seed: bool = True,
                      note: str = DEFAULTS_NOTE) -> None:
    """The decoder parameter flags (``--method`` too unless ``method_flag`` is False, ``--seed`` unless ``seed`` is
    False); ``note`` heads the group."""
    group = parser.add_argument_group("decoder", note)
    if method_flag:
        group.add_argument("--method", default=None, choices=METHODS,
                           help="decoder (default: the model folder's method, else multi_block)")
    for flag, (_, kind, text) in DECODER_FLAGS.items():
        group.add_argument(flag, type=kind, default=None, metavar=flag[2:].replace("-", "_").upper(), help=text)
    group.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                       help="multi_block: stop at the first end-of-text")
    group.add_argument("--reference-exact", action="store_true", default=None,
                       help="multi_block: reproduce the reference's cache-branch order exactly")
    group.add_argument("--refresh-while-waiting", action=argparse.BooleanOptionalAction, default=None,
                       help="multi_block with a cache: a finished block waiting for the cache makes every forward a "
                            "full refresh (the reference's rule; --no-refresh-while-waiting recomputes only the "
                            "waiting blocks, after the cached prefix)")
    group.add_argument("--suffix-cache", action=argparse.BooleanOptionalAction, default=None,
                       help="multi_block with a cache: forward only the active blocks, the masked tail after them "
                            "from the cache")
    if seed:
        group.add_argument("--seed", type=int, default=None, help="seed for sampling (default: unseeded)")


MODEL_HELP = ("model folder, or a shipped model's name: teacher, student, ar (`d3llm models` lists them; a real path "
              "wins over a name; default: the shipped teacher)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, metavar="DIR|NAME", help=MODEL_HELP)
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: as stored)")
    add_threads_flag(group)


def add_threads_flag(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: 1 for models under 50M parameters, which gain little from "
                             "more threads on an idle machine and slow down many times over when another job holds "
                             "a core; else torch's default, one per core)")


SMALL_MODEL = 50_000_000


def apply_threads(threads: int | None, model=None) -> int:
    """Set torch's CPU thread count from ``--threads`` (see :func:`add_threads_flag`); returns it."""
    import torch

    from d3llm.errors import ConfigError

    if threads is not None and threads <= 0:
        raise ConfigError(f"--threads must be a positive number of threads, got {threads}")
    if threads is None and model is not None and model.num_parameters() < SMALL_MODEL:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def decoder_params(args: argparse.Namespace) -> dict:
    """The decoder parameters given on the command line."""
    params = {name: getattr(args, flag[2:].replace("-", "_")) for flag, (name, _, _) in DECODER_FLAGS.items()}
    params = {k: v for k, v in params.items() if v is not None}
    for name in ("early_stop", "reference_exact", "refresh_while_waiting", "suffix_cache"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params


def model_folder(args: argparse.Namespace) -> str:
    """``--model``, else the shipped teacher. A name that looks like a hub id (``org/name``) and is no folder here
    is refused with the reason: this project never downloads."""
    if not args.model:
        from d3llm.assets import default_model_path

        return str(default_model_path())
    return check_model_folder(args.model)


def teacher_folder(spec: str | None) -> str:
    """``--teacher``: a folder or a shipped model's name, else the shipped teacher."""
    return model_folder(argparse.Namespace(model=spec))


def check_model_folder(spec: str) -> str:
    """The folder ``--model SPEC`` names (a path, or a shipped model's name); a clear error when there is none."""
    from d3llm.assets import resolve_model, unknown_model_hint
    from d3llm.errors import CheckpointError

    path = resolve_model(spec)
    if path.is_dir():
        return str(path)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", spec) is not None and not spec.startswith((".", "/"))
    if looks_like_hub_id and not path.exists():
        raise CheckpointError(
            f"model folder '{spec}' does not exist. It looks like a Hugging Face hub id, but d3llm never downloads: "
            f"download the checkpoint first (e.g. `huggingface-cli download {spec} --local-dir models/"
            f"{spec.split('/')[-1]}`) and pass that folder"
        )
    if not path.exists():
        raise CheckpointError(f"model folder '{spec}' does not exist{unknown_model_hint(spec)}")
    raise CheckpointError(f"'{spec}' is a file; expected a model folder holding config.json and weights")


def read_prompts(prompts: list[str]) -> list[str]:
    """Command-line prompts, where ``-`` stands for the whole of standard input (one prompt)."""
    out = []
    for text in prompts:
        if text == "-":
            text = sys.stdin.read().removesuffix("\n")
        out.append(text)
    return out


def output_file(spec: str | None, flag: str | None = "--out") -> Path | None:
    """Check an output file path before any work: it is a regular file or nothing yet (not a folder, a device, a
    FIFO: see :func:`d3llm.files.check_output_file`), and its folder exists. ``flag`` names it in errors (None for
    a positional argument)."""
    if spec is None:
        return None
    from d3llm.errors import ConfigError
    from d3llm.files import check_output_file

    path = Path(spec).expanduser()
    target = check_output_file(path, flag)
    if not target.parent.is_dir():
        raise ConfigError(f"{f'{flag} ' if flag else ''}{spec}: the folder {target.parent} does not exist; create it "
                          f"first or choose another path")
    return path
