"""What ``d3llm pipeline`` runs: presets, each a list of stages, each stage one existing command.

A :class:`Stage` is the argument list of a ``d3llm`` command with ``{out}`` standing for the run folder, the folder
it writes (relative to the run folder) and the kind of output (a model folder, a trajectory set, a sweep), which
says how a finished stage is verified and how an interrupted one resumes (see :mod:`d3llm.pipeline.runner`). The
stage commands are the pipeline's settings: ``OUT/pipeline.json`` records them, and a rerun with other ones in the
same folder is refused.

* ``default``: the recipe of the shipped models, command for command from their model cards
  (``d3llm/assets/arith-*/README.md``): the teacher trained from scratch with the earlier fixed recipe (5,000 steps
  of 64, one 48-token canvas, single questions), fine-tuned with the robust recipe (1,200 steps of 32), three
  trajectory sets (2,560 problems at 48 new tokens, 640 at 128, 512 two-turn conversations at 64), one
  distillation over the three (1,200 steps of 32), and the distillation benchmark's ``multi_block`` curves (blocks
  of 16, 24 and 48, no cache) for teacher and student on the 500 held-out problems. The cards' times: 34 + 35
  minutes of teacher training, 17 minutes of extraction (three jobs at once; about 40 one after the other), 31
  minutes of distillation, and about 13 minutes of sweep: **about 2.5 hours on 2 CPU cores** (not run as one
  pipeline). The teacher-base stage sees today's task, whose stream holds its one-step problems (15%) from the first
  step; the first teacher never saw them (its fine-tune did).
* ``tiny``: the same four kinds of stage, small enough to finish within 15 minutes on 2 CPU cores, on the task's
  one-step problems (``arith:train:steps=1``). Measured (docs/distillation.md, "One command from scratch"): 774 s,
  and a teacher that learns the answers' format but not yet the arithmetic (1-4% right): the run shows the
  mechanics, not the speed-up.
* :data:`MICRO` (not offered by the command line): a seconds-long run of the same stages on a tiny model, for the
  tests; its numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("llada", "dream")
KINDS = ("model", "trajectories", "sweep")


@dataclass(frozen=True)
class Stage:
    """One stage: ``command`` is a ``d3llm`` argument list (``{out}`` is the run folder), ``output`` the folder it
    writes (relative to the run folder), ``kind`` one of :data:`KINDS`; ``files`` maps paths relative to the run
    folder to the text written there before the command runs (the sweep's YAML file)."""

    name: str
    command: tuple[str, ...]
    output: str
    kind: str
    files: dict[str, str] = field(default_factory=dict)

    def argv(self, out: str) -> list[str]:
        """The command's arguments for the run folder ``out``."""
        return [arg.replace("{out}", out) for arg in self.command]

    def to_dict(self) -> dict:
        return {"name": self.name, "command": list(self.command), "output": self.output, "kind": self.kind,
                "files": dict(self.files)}


@dataclass(frozen=True)
class Preset:
    """A named list of stages; ``time`` is what the run is expected to take, in words."""

    name: str
    description: str
    time: str
    family: str
    stages: tuple[Stage, ...]

    def settings(self) -> dict:
        """What ``OUT/pipeline.json`` records and a rerun must match."""
        return {"preset": self.name, "family": self.family, "stages": [s.to_dict() for s in self.stages]}


def _sweep_file(limit: int, gen: int, blocks: tuple[int, ...], thresholds: tuple[float, ...],
                task: str = "arith") -> str:
    """The sweep's YAML: the one-token-per-forward point at blocks of 16 (or the canvas, when shorter), then one
    ``multi_block`` curve without cache per block size (the distillation benchmark's settings:
    benchmarks/distill.py)."""
    import yaml

    methods = {f"multi_block B{b}": {"method": "multi_block", "block_size": b, "threshold": list(thresholds),
                                     "block_add_threshold": 0.1, "decoded_token_threshold": 0.95,
                                     "early_stop": True, "cache_delay_iter": None, "refresh_interval": None}
               for b in blocks}
    config = {"task": task, "limit": limit, "batch_size": 50, "metric": "strict",
              "decoder": {"max_new_tokens": gen, "block_size": min(16, gen)}, "methods": methods}
    return yaml.safe_dump(config, sort_keys=False)


def _sweep_stage(limit: int, gen: int, blocks: tuple[int, ...], thresholds: tuple[float, ...],
                 task: str = "arith") -> Stage:
    return Stage("sweep", ("sweep", "--model", "{out}/teacher", "--model", "{out}/student",
                           "--config", "{out}/sweep.yaml", "--out", "{out}/sweep"), "sweep", "sweep",
                 files={"sweep.yaml": _sweep_file(limit, gen, blocks, thresholds, task)})


def _check_family(family: str) -> None:
    from d3llm.errors import ConfigError, did_you_mean

    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}{did_you_mean(family, FAMILIES)}; expected one of "
                          f"{', '.join(FAMILIES)}")


def default(family: str = "llada") -> Preset:
    """The shipped models' recipe (their model cards' commands)."""
    _check_family(family)
    teacher = "{out}/teacher"
    sets = ("t48", "t128", "t64c")
    extract = {  # name -> (data, data seed, problems, new tokens)
        "t48": ("arith", 0, 2560, 48), "t128": ("arith", 1, 640, 128), "t64c": ("arith:train:turns=2", 2, 512, 64)}
    stages = [
        Stage("teacher-base", ("train", "--model", f"{family}-small", "--out", "{out}/teacher-base",
                               "--response-length", "48", "--turns", "1", "--eval-decode", "vanilla"),
              "teacher-base", "model"),
        Stage("teacher", ("train", "--model", "{out}/teacher-base", "--out", teacher, "--steps", "1200",
                          "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "50", "--eval-decode", "vanilla",
                          "--eval-every", "300", "--save-every", "300", "--log-every", "50"), "teacher", "model"),
    ]
    for name in sets:
        data, seed, limit, gen = extract[name]
        stages.append(Stage(f"extract-{name}", ("trajectories", "extract", "--teacher", teacher, "--data", data,
                                                "--data-seed", str(seed), "--limit", str(limit), "--gen-length",
                                                str(gen), "--block-size", "16", "--out",
                                                f"{{out}}/trajectories/{name}"),
                            f"trajectories/{name}", "trajectories"))
    stages.append(Stage("student", ("distill", "--teacher", teacher, "--trajectories",
                                    ",".join(f"{{out}}/trajectories/{s}" for s in sets), "--out", "{out}/student",
                                    "--steps", "1200", "--batch-size", "32", "--lr", "5e-4", "--warmup-steps", "20",
                                    "--min-lr-ratio", "0.05", "--window-sizes", "16,16,24,24,48,48",
                                    "--eval-every", "400", "--save-every", "400", "--keep", "4",
                                    "--eval-threshold", "0.1"), "student", "model"))
    stages.append(_sweep_stage(500, 48, (16, 24, 48), (0.02, 0.05, 0.1, 0.2, 0.5)))
    return Preset("default", "the shipped models' recipe, from their model cards",
                  "about 2.5 hours on 2 CPU cores", family, tuple(stages))


TINY_TASK = "arith:train:steps=1"


def tiny(family: str = "llada") -> Preset:
    """Every kind of stage, within 15 minutes on 2 CPU cores, on the task's one-step problems."""
    _check_family(family)
    stages = (
        Stage("teacher", ("train", "--model", f"{family}-small", "--out", "{out}/teacher", "--data", TINY_TASK,
                          "--eval-data", "arith:test:steps=1", "--response-length", "32", "--turns", "1",
                          "--steps", "900", "--batch-size", "64", "--lr", "2e-3", "--warmup-steps", "100",
                          "--eval-decode", "vanilla", "--eval-every", "300", "--eval-decode-size", "50",
                          "--save-every", "150",
                          "--log-every", "50"), "teacher", "model"),
        Stage("extract", ("trajectories", "extract", "--teacher", "{out}/teacher", "--data", TINY_TASK,
                          "--limit", "384", "--gen-length", "32", "--block-size", "16", "--attempts", "2",
                          "--shard-size", "128", "--out", "{out}/trajectories"), "trajectories", "trajectories"),
        Stage("student", ("distill", "--teacher", "{out}/teacher", "--trajectories", "{out}/trajectories",
                          "--out", "{out}/student", "--steps", "200", "--batch-size", "32", "--lr", "5e-4",
                          "--warmup-steps", "10", "--min-lr-ratio", "0.05", "--window-sizes", "16,32",
                          "--eval-every", "100", "--eval-size", "50", "--save-every", "50", "--keep", "2",
                          "--eval-threshold", "0.1"), "student", "model"),
        _sweep_stage(100, 32, (32,), (0.05, 0.1, 0.2, 0.5), task="arith:test:steps=1"),
    )
    return Preset("tiny", "a small teacher and student on the task's one-step problems",
                  "at most 15 minutes on 2 CPU cores", family, stages)


def micro(family: str = "llada") -> Preset:
    """Seconds: the stages' mechanics on a tiny model (the tests' preset)."""
    _check_family(family)
    stages = (
        Stage("teacher", ("train", "--model", f"{family}-tiny", "--out", "{out}/teacher", "--response-length", "48",
                          "--turns", "1", "--steps", "4", "--batch-size", "4", "--eval-size", "2",
                          "--save-every", "2", "--eval-every", "4", "--log-every", "2"), "teacher", "model"),
        Stage("extract", ("trajectories", "extract", "--teacher", "{out}/teacher", "--data", "arith", "--limit", "4",
                          "--gen-length", "48", "--block-size", "16", "--attempts", "1", "--batch-size", "4",
                          "--shard-size", "2", "--out", "{out}/trajectories"), "trajectories", "trajectories"),
        Stage("student", ("distill", "--teacher", "{out}/teacher", "--trajectories", "{out}/trajectories",
                          "--out", "{out}/student", "--steps", "4", "--batch-size", "2", "--window-sizes", "16",
                          "--keep-incorrect", "--eval-size", "0", "--save-every", "2", "--log-every", "2"),
              "student", "model"),
        _sweep_stage(2, 48, (48,), (0.5,)),
    )
    return Preset("micro", "a seconds-long run of every stage on a tiny model (tests)", "seconds", family, stages)


#: the presets the command line offers, by name: ``name -> builder(family)``
PRESETS = {"tiny": tiny, "default": default}
