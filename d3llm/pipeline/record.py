"""``OUT/pipeline.json``: the settings of a pipeline run and a done marker for each finished stage.

The settings are the preset's name, the model family and every stage's command (:meth:`Preset.settings`); a run
folder holds one pipeline, so a rerun with other settings is refused with the difference named. A stage's marker
holds a fingerprint of its output files (SHA-256), its wall time and when it finished; the runner verifies a marked
stage before skipping it. Every change is written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

from d3llm.errors import ConfigError
from d3llm.files import atomic_write_text, make_folder, read_json

NAME = "pipeline.json"
KIND = "d3llm-pipeline"
VERSION = 1


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two runs' settings, for the refusal."""
    if old.get("preset") != new["preset"]:
        return [f"preset {old.get('preset')!r} (now {new['preset']!r})"]
    diffs = [f"{key} {old.get(key)!r} (now {new[key]!r})" for key in ("family",) if old.get(key) != new[key]]
    before = {s.get("name"): s for s in old.get("stages", []) if isinstance(s, dict)}
    for stage in new["stages"]:
        if stage["name"] not in before:
            diffs.append(f"stage {stage['name']!r} is new")
        elif before[stage["name"]] != stage:
            was = before[stage["name"]]
            if was.get("command") != stage["command"]:
                old_args, new_args = was.get("command") or [], stage["command"]
                diffs.append(f"stage {stage['name']!r}: command {' '.join(old_args)!r} (now {' '.join(new_args)!r})")
            else:
                diffs.append(f"stage {stage['name']!r}: its settings")
    gone = [name for name in before if name not in {s["name"] for s in new["stages"]}]
    diffs += [f"stage {name!r} is gone" for name in gone]
    return diffs or ["the stage order"]


class Record:
    """The run folder's ``pipeline.json``: :meth:`open` it, then :meth:`done`, :meth:`mark_done`, :meth:`forget`."""

    def __init__(self, out: Path, data: dict) -> None:
        self.out, self.data = out, data

    @property
    def path(self) -> Path:
        return self.out / NAME

    @classmethod
    def open(cls, out: Path, settings: dict) -> "Record":
        """The record of the run in ``out`` with these settings: read (refused when its settings differ), or
        created for a new run (refused when ``out`` holds anything but a pipeline run)."""
        file = out / NAME
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; expected a folder for the pipeline's run")
        if file.is_file():
            data = read_json(file, ConfigError)
            if not isinstance(data, dict) or data.get("kind") != KIND:
                raise ConfigError(f"{file} is not a d3llm pipeline record (expected \"kind\": \"{KIND}\"); choose "
                                  f"another --out")
            saved = {k: data.get(k) for k in settings}
            if saved != settings:
                raise ConfigError(f"{out} holds a pipeline run with other settings (differs in: "
                                  f"{'; '.join(_differences(saved, settings))}); rerun with the same settings to "
                                  f"continue it, or choose another --out")
            data.setdefault("done", {})
            return cls(out, data)
        if out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"--out {out} is not empty and holds no {NAME}: choose a new or empty folder for the "
                              f"pipeline's run")
        from d3llm import __version__

        record = cls(make_folder(out), {"kind": KIND, "version": VERSION, **settings, "done": {},
                                        "created_by": f"d3llm {__version__}"})
        record.save()
        return record

    def save(self) -> None:
        import json

        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")

    def done(self, stage: str) -> dict | None:
        """The stage's done marker, or None."""
        return self.data["done"].get(stage)

    def mark_done(self, stage: str, fingerprint: str, wall_s: float) -> None:
        self.data["done"][stage] = {"fingerprint": fingerprint, "wall_s": round(wall_s, 1),
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def forget(self, stages: list[str]) -> None:
        """Drop the markers of ``stages`` (a stage about to run, and every later one)."""
        if any(s in self.data["done"] for s in stages):
            for s in stages:
                self.data["done"].pop(s, None)
            self.save()
