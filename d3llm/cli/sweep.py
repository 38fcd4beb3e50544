"""``d3llm sweep``: accuracy against tokens per forward for models x methods x thresholds, scored by AUP.

    d3llm sweep --config benchmarks/sweep_arith.yaml --out runs/sweep              # the shipped teacher
    d3llm sweep --model runs/teacher --model runs/student --config SWEEP.yaml --out runs/cmp
    d3llm sweep --methods multi_block --thresholds 0.1,0.5,1 --max-new-tokens 48 --block-size 16 --limit 50 \
        --out runs/quick

Writes OUT/sweep.json (every point: accuracy, TPF, tokens/s, latency p50/p99, NFE, the resolved settings; the
hardware, versions, dtype and git commit), OUT/sweep.md (the points and the AUP table) and OUT/sweep.png (accuracy
against TPF per curve, the AUP area shaded). Each model's one-token-per-forward point (vanilla, steps =
max_new_tokens) is measured once and starts every curve of that model. `d3llm aup OUT/sweep.json` re-scores the
results, also together with other sweeps.

Finished points, and the finished batches of the point in flight, are kept in OUT/sweep.json.partial as they come:
after an interruption (Ctrl-C) the same command continues where it stopped and writes what an uninterrupted run
writes (timings aside); other settings with the same --out are refused. The file is removed once the outputs are
written.

Without --config: --methods (default: fast_dllm,block_entropy,multi_block) with --thresholds (default: a grid per
method); decoder flags apply to every point. Flags given with --config override the file's values.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from d3llm.cli.options import (add_decoder_flags, add_parser, add_threads_flag, apply_threads, check_model_folder,
                               decoder_params)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "sweep", "accuracy-parallelism sweep with AUP, JSON, table and plot", __doc__)
    # d3llm.eval.sweep.DEFAULT_METHODS, spelled out: `d3llm --help` imports no torch (tested against it)
    add_sweep_flags(p, models="the shipped teacher", methods="fast_dllm,block_entropy,multi_block")
    p.add_argument("--out", required=True, help="output folder for sweep.json, sweep.md and sweep.png")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decoder_flags(p, method_flag=False)
    p.set_defaults(func=run)


def add_sweep_flags(p: argparse.ArgumentParser, *, models: str, methods: str) -> None:
    """The flags saying what a sweep decodes (``models``, ``methods``: the defaults, for the help)."""
    p.add_argument("--model", action="append", default=[], metavar="DIR|NAME",
                   help="model folder or shipped model name (teacher, student, ar); repeat for several "
                        f"(default: {models})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: as stored)")
    add_threads_flag(p)
    p.add_argument("--config", default=None, metavar="SWEEP.yaml", help="what to sweep (see d3llm.eval.sweep)")
    p.add_argument("--task", default=None, help="'arith' (its test split) or a JSONL file (default: arith)")
    p.add_argument("--turns", type=int, default=None, metavar="N",
                   help="built-in task: each question as the last of a conversation of N questions")
    p.add_argument("--methods", default=None, help=f"comma-separated methods to sweep, without --config "
                                                   f"(default: {methods})")
    p.add_argument("--thresholds", default=None, help="comma-separated thresholds for every --methods entry")
    p.add_argument("--limit", type=int, default=None, help="problems per point (default: the whole test set)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts decoded together (default 50)")
    p.add_argument("--metric", default=None, choices=["strict", "flexible"], help="accuracy (default strict)")


def _floats(text: str, flag: str) -> list[float]:
    from d3llm.errors import ConfigError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def sweep_config(args: argparse.Namespace, default_methods: Sequence[str]):
    """The :class:`~d3llm.eval.sweep.SweepConfig` of the flags (``--config`` or ``--methods``, then overrides)."""
    from d3llm.errors import ConfigError
    from d3llm.eval.sweep import SweepConfig
    from d3llm.tasks.data import with_turns

    if args.config:
        if args.methods or args.thresholds:
            raise ConfigError("--methods/--thresholds and --config both given; put the methods in the config file")
        config = SweepConfig.from_yaml(args.config)
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(default_methods)
        thresholds = _floats(args.thresholds, "--thresholds") if args.thresholds else None
        config = SweepConfig.default(methods, thresholds, source="the command line")
    for name in ("task", "limit", "batch_size", "metric"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.task = with_turns(config.task, args.turns)
    if config.limit is not None and config.limit <= 0:
        raise ConfigError(f"--limit must be a positive number of problems, got {config.limit}")
    if config.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {config.batch_size}")
    if args.seed is not None:
        config.seed = args.seed
    flags = decoder_params(args)
    if "threshold" in flags:
        raise ConfigError("--threshold is swept: use --thresholds (or methods.METHOD.threshold in --config)")
    config.decoder.update(flags)
    return config


def check_plotting(no_plot: bool) -> None:
    """matplotlib is there, unless ``--no-plot``."""
    from d3llm.errors import ConfigError

    if not no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("the plot needs matplotlib: pip install 'd3llm[eval]' (or pass --no-plot)") from None


def decode_sweep(args: argparse.Namespace, config, out, *, default_models: Sequence[str], command: str,
                 also_writes: Sequence = ()) -> tuple[dict, dict]:
    """Run the sweep ``config`` of the flags into the folder ``out`` (resumable from its partial file); return the
    results and the paths of ``sweep.json``/``.md``/``.png``. ``also_writes``: other outputs, checked writable first."""
    from pathlib import Path

    from d3llm.errors import ConfigError
    from d3llm.eval.partial import discard, partial_path
    from d3llm.eval.sweep import output_paths, run_sweep, write_outputs
    from d3llm.files import check_output_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; expected a folder for the sweep's outputs")
    resume = partial_path(output_paths(out)["json"])
    for path in (*output_paths(out, png=not args.no_plot).values(), *also_writes, resume):
        check_output_file(path)
    check_plotting(args.no_plot)
    models = [check_model_folder(m) for m in args.model or default_models]
    results = run_sweep(models, config, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                        on_load=lambda model: apply_threads(args.threads, model), command=command, resume=resume)
    paths = write_outputs(results, out, png=not args.no_plot)
    discard(resume)  # the outputs hold every point now
    return results, paths


def command_line(name: str) -> str:
    """The command as typed (for the outputs' provenance), when ``d3llm NAME`` is what runs."""
    return shlex.join(["d3llm", *sys.argv[1:]]) if sys.argv[1:2] == [name] else ""


def run(args: argparse.Namespace) -> int:
    from d3llm.assets import default_model_path
    from d3llm.eval.sweep import DEFAULT_METHODS

    config = sweep_config(args, DEFAULT_METHODS)
    _, paths = decode_sweep(args, config, args.out, default_models=[str(default_model_path())],
                            command=command_line("sweep"))
    print(paths["table"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
