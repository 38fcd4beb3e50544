"""The partial results of an unfinished ``d3llm eval --out FILE`` or ``d3llm sweep --out DIR``.

They live beside the final output, in ``FILE.partial`` and ``DIR/sweep.json.partial``: one JSON object holding the
run's plan (every setting its figures depend on, see :func:`d3llm.eval.runner.eval_plan`), the finished points of a
sweep and the finished batches of the point in flight. The file is written when the run starts (an unwritable place
fails before any decoding), rewritten atomically after every batch, so an interruption (Ctrl-C) loses at most the
batch being decoded, and removed once the final output is written. A rerun
with the same plan continues from it; a rerun with another plan is refused (:func:`d3llm.resume.check_plan`), naming
each differing setting.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from d3llm.errors import ConfigError
from d3llm.eval.runner import Batch
from d3llm.files import atomic_write_text, make_folder, read_json
from d3llm.resume import as_json, check_plan

SUFFIX = ".partial"
KIND = "d3llm-partial-results"


def partial_path(final: str | os.PathLike) -> Path:
    """Where the partial results of the output ``final`` are kept: ``final`` + :data:`SUFFIX`."""
    final = Path(final).expanduser()
    return final.with_name(final.name + SUFFIX)


def discard(path: str | os.PathLike) -> None:
    """Remove the partial results ``path`` (if any): the final output is written and holds everything."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).expanduser().unlink()


class PartialResults:
    """The finished points and batches of one run (``plan``), saved in ``path``.

    Points and batches are keyed by a point id the caller chooses (stable for a plan, e.g. its position in the
    sweep)."""

    def __init__(self, path: str | os.PathLike, plan: dict, what: str) -> None:
        self.path, self.plan, self.what = Path(path).expanduser(), as_json(plan), what
        self.points: dict[str, dict] = {}
        self._batches: dict[str, dict[str, dict]] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, plan: dict, what: str) -> PartialResults:
        """The partial results in ``path``, written at once with this plan (so that an unwritable place fails before
        any decoding). A file with saved work made with another plan is refused, naming the differing settings; one
        with nothing saved is started over. ``what`` names the run in messages (``an unfinished sweep``)."""
        self = cls(path, plan, what)
        if self.path.exists():
            self._read()
        self._write()
        return self

    def _read(self) -> None:
        fix = f"delete {self.path} to start over"
        try:
            data = read_json(self.path, ConfigError)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; it holds the partial results of an interrupted run: {fix}") from None
        if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("plan"), dict):
            raise ConfigError(f"{self.path} is not a partial-results file of d3llm (expected \"kind\": \"{KIND}\"); "
                              f"{fix}")
        points, batches = data.get("points", {}), data.get("batches", {})
        if not (isinstance(points, dict) and isinstance(batches, dict)
                and all(isinstance(v, dict) for v in (*points.values(), *batches.values()))):
            raise ConfigError(f"{self.path}: 'points' and 'batches' must map point ids to objects; {fix}")
        if not points and not any(batches.values()):
            return  # nothing to lose: this run starts over with its own plan
        check_plan(data["plan"], self.plan, where=str(self.path), what=self.what,
                   hint=f"rerun with the same settings to finish it, choose another --out, or {fix}")
        self.points, self._batches = points, batches
        for point in batches:
            self.batches(point)  # every saved batch is checked now, before any decoding

    def batches(self, point: str) -> dict[int, Batch]:
        """The saved batches of ``point``, by first row."""
        return {int(start): Batch.from_dict(b, str(self.path)) for start, b in self._batches.get(point, {}).items()}

    def save_batch(self, point: str, batch: Batch) -> None:
        self._batches.setdefault(point, {})[str(batch.start)] = batch.to_dict()
        self._write()

    def save_point(self, point: str, result: dict) -> None:
        """``point`` is finished with ``result``: it replaces the point's batches."""
        self.points[point] = result
        self._batches.pop(point, None)
        self._write()

    def saved_rows(self) -> int:
        """Problems saved: those of every finished point (its ``n``) and of every saved batch."""
        return (sum(int(p.get("n", 0)) for p in self.points.values())
                + sum(len(b["tokens"]) for saved in self._batches.values() for b in saved.values()))

    def interrupted(self, total: int) -> KeyboardInterrupt:
        """The interruption to raise in place of a Ctrl-C: it says what is kept and how to continue (a file with
        nothing saved is removed)."""
        saved = self.saved_rows()
        if not saved:
            discard(self.path)
            return KeyboardInterrupt("no batch had finished: nothing is saved")
        return KeyboardInterrupt(f"{saved} of {total} problems are saved in {self.path}; the same command continues "
                                 f"from there")

    def _write(self) -> None:
        make_folder(self.path.parent)
        atomic_write_text(self.path, json.dumps({"kind": KIND, "what": self.what, "plan": self.plan,
                                                 "points": self.points, "batches": self._batches}) + "\n")
