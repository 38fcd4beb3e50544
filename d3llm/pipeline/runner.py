"""Run a pipeline's stages in one run folder: skip the verified finished ones, resume the interrupted one.

Each stage is its command run in-process exactly as ``d3llm <command> ...`` would run it (the command-line parser
builds the arguments and calls the command's own function), with the command's own progress bars under a header
``stage 2/4: extract: d3llm trajectories extract ...``. ``--threads`` and the progress switch are passed to every
command; they are not settings of the run.

* **A finished stage** (a done marker in ``OUT/pipeline.json``) is verified before it is skipped: its output files
  still have the fingerprint recorded when it finished, and a model folder loads, a trajectory set passes its
  checksums, a sweep's results read back. A stage that fails the check runs again, and so does every later one.
* **An interrupted stage** resumes with its command's own mechanism: ``train`` and ``distill`` get ``--resume``
  when their folder holds checkpoints (bit-exact continuation), ``trajectories extract`` keeps its verified
  shards when run again; a sweep starts over.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from d3llm.pipeline.presets import Preset, Stage
from d3llm.pipeline.record import Record

FINGERPRINT_FILES = {  # the files whose content a finished stage's marker records
    "model": ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json"),
    "trajectories": ("manifest.json",),
    "sweep": ("sweep.json", "sweep.md", "sweep.png"),
}


def fingerprint(stage: Stage, out: Path) -> str | None:
    """SHA-256 over the stage's output files (None when none exists)."""
    from d3llm.distill.store import files_hash

    return files_hash(out / stage.output, FINGERPRINT_FILES[stage.kind])


def verify(stage: Stage, out: Path, marker: dict) -> str | None:
    """Why the finished stage's output is no longer what it was (None: it is, and it loads)."""
    from d3llm.errors import D3LLMError

    folder = out / stage.output
    if not folder.is_dir():
        return f"{folder} is missing"
    if fingerprint(stage, out) != marker.get("fingerprint"):
        return f"the files in {folder} changed since it finished"
    try:
        if stage.kind == "model":
            import d3llm

            d3llm.load_model(folder, device="cpu")
            d3llm.load_tokenizer(folder)
        elif stage.kind == "trajectories":
            from d3llm.distill.store import read_trajectories

            read_trajectories(folder)
        else:
            from d3llm.eval.sweep import read_sweep_results

            read_sweep_results(folder / "sweep.json")
    except (D3LLMError, OSError) as exc:
        return str(exc)
    return None


def _resumable(stage: Stage, out: Path) -> bool:
    """A model stage whose folder holds checkpoints of an earlier, interrupted run."""
    if stage.kind != "model" or not (out / stage.output).is_dir():
        return False
    from d3llm.training.checkpoint import list_checkpoints

    return bool(list_checkpoints(out / stage.output))


def runtime_flags(stage: Stage, threads: int | None, progress: bool | None) -> list[str]:
    """``--threads`` and the progress switch in the stage's command's own spelling."""
    flags = [] if threads is None else ["--threads", str(threads)]
    if progress is not None:
        if stage.kind == "sweep":
            flags += [] if progress else ["--no-progress"]
        else:
            flags.append("--progress" if progress else "--no-progress")
    return flags


def run_command(argv: list[str]) -> None:
    """Run one ``d3llm`` command in this process, as the console script would (its errors propagate)."""
    from d3llm.cli.main import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


def _say(text: str) -> None:
    print(text, flush=True)


def run_pipeline(preset: Preset, out: str | Path, *, threads: int | None = None,
                 progress: bool | None = None) -> dict:
    """Run (or continue) ``preset`` in the run folder ``out``; returns the report's summary
    (:func:`d3llm.pipeline.report.write_report`)."""
    from d3llm.files import atomic_write_text
    from d3llm.pipeline.report import write_report

    out = Path(out).expanduser()
    record = Record.open(out, preset.settings())
    names = [s.name for s in preset.stages]
    n = len(preset.stages)
    _say(f"d3llm pipeline: preset {preset.name} ({preset.description}; {preset.time}), {n} stages in {out}")
    t0 = time.perf_counter()
    rerun = False  # once a stage runs, every later one runs too (its inputs may have changed)
    for k, stage in enumerate(preset.stages, start=1):
        head = f"stage {k}/{n}: {stage.name}"
        marker = record.done(stage.name)
        if marker is not None and not rerun:
            problem = verify(stage, out, marker)
            if problem is None:
                _say(f"{head}: done ({marker['wall_s']:.0f} s, {marker['finished']}); verified {out / stage.output}, "
                     f"skipped")
                continue
            _say(f"{head}: marked done, but {problem}; running it again")
        record.forget(names[k - 1:])
        rerun = True
        for name, text in stage.files.items():
            atomic_write_text(out / name, text)
        argv = stage.argv(str(out)) + runtime_flags(stage, threads, progress)
        resume = _resumable(stage, out)
        if resume:
            argv.append("--resume")
        _say(f"\n{head}{' (resuming from its checkpoints)' if resume else ''}: {shlex.join(['d3llm', *argv])}")
        start = time.perf_counter()
        try:
            run_command(argv)
        except KeyboardInterrupt:
            _say(f"\n{head} interrupted; run the same command again to resume at this stage")
            raise
        record.mark_done(stage.name, fingerprint(stage, out), time.perf_counter() - start)
    summary = write_report(preset, out, record, wall_s=time.perf_counter() - t0)
    _say(f"\n{summary['text']}")
    return summary
