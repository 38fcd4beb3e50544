"""d3llm models: the models shipped with d3llm, usable by name in every command (``--model student``) and in the
Python API (``d3llm.load_model("student")``) from any working directory. A real path wins over a name."""

from __future__ import annotations

import argparse
import json

from d3llm.cli.options import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "models", "list the shipped models and their names", __doc__)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from d3llm.assets import SHIPPED
    from d3llm.models.checkpoint import count_parameters, load_config

    rows = []
    for shipped in SHIPPED:
        config = load_config(shipped.folder)
        rows.append({"name": shipped.name, "aliases": list(shipped.aliases), "family": config.family,
                     "parameters": count_parameters(config), "description": shipped.description,
                     "path": str(shipped.folder)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['family']:<5}  {r['parameters']:>9,} parameters  {r['description']}")
        print(f"{'':<{width}}  {r['path']}")
    return 0
