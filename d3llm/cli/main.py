"""``d3llm`` console script: a thin dispatcher over the command modules.

Errors of bad input (:class:`~d3llm.errors.D3LLMError`) are printed as one clear line and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from d3llm.errors import D3LLMError

COMMANDS = ("demo", "eval", "generate", "info", "train")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="d3llm", description="Fast diffusion language models (LLaDA, Dream, d3LLM).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"d3llm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from d3llm import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except D3LLMError as exc:
        print(f"d3llm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d3llm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
