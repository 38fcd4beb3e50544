"""``d3llm`` console script: a thin dispatcher over the command modules.

Errors of bad input (:class:`~d3llm.errors.D3LLMError`, among them a refused write,
:class:`~d3llm.errors.WriteError`) are printed as one clear line and exit with status 2, without a traceback; so is
any other :class:`OSError` (a file the system refused to read or write), with the file and the cause.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from d3llm.errors import D3LLMError

COMMANDS = ("aup", "chat", "demo", "distill", "eval", "generate", "info", "init", "leaderboard", "lm_harness", "models", "pipeline",
            "serve", "sweep", "train", "trajectories")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from d3llm import __version__
    from d3llm.cli.options import Parser

    parser = Parser(prog="d3llm", description="Fast diffusion language models (LLaDA, Dream, d3LLM).")
    parser.add_argument("--version", action="version", version=f"d3llm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"d3llm.cli.{name}").register(sub)
    return parser


@contextlib.contextmanager
def _one_line_warnings(command: str | None):
    """Show warnings as ``d3llm <command>: warning: ...`` lines instead of Python's source-line format, while the
    command runs (a later command in the same process, a test, names itself)."""
    import warnings

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"d3llm {command}: warning: {message}\n" if command else f"d3llm: warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = one_line  # the format only: pytest's and other recorders still see every warning
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every later argument belongs to lm-eval, options included (REMAINDER stops at them)
        from d3llm.cli import lm_harness

        args = argparse.Namespace(command="lm-eval", func=lm_harness.run, lm_eval_args=argv[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with _one_line_warnings(args.command):
            return int(args.func(args) or 0)
    except D3LLMError as exc:
        print(f"d3llm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused a file that no module's own error explains
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"d3llm {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a resumable command says what it kept
        print(f"d3llm {args.command}: interrupted" + (f" ({exc})" if exc.args else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
