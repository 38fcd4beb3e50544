"""The on-disk trajectory set: Parquet shards, a per-shard record of each finished shard, and a manifest.

Layout of a trajectory folder::

    plan.json                  the run's configuration (teacher and tokenizer hashes, decoder, source, shards)
    shards/shard-00000.parquet one row per source row (see :data:`COLUMNS`)
    shards/shard-00000.json    written after the shard: its SHA-256, size, rows and the run's key
    manifest.json              written once every shard exists: everything above plus the per-shard checksums

A row stores what SPEC 6.3 calls lossless: the prompt ids, the N generated ids and ``order[j]``, the step (0-based
forward) at which generated position j was committed (``N`` if never). The teacher's state after step k is the
prompt followed by ``output_ids[j]`` where ``order[j] <= k`` and the mask token elsewhere (:func:`state_at`), N
times smaller than the reference's list of N full states. Every file is written atomically; readers check every
shard against the manifest before trusting it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d3llm.errors import D3LLMError
from d3llm.files import atomic_write, atomic_write_text, make_folder, read_json as read_json_file
from d3llm.resume import canonical_key  # noqa: F401 (the trajectory sets' key, imported from here)
from d3llm.training.checkpoint import sha256_file

MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARDS = "shards"
FORMAT = "d3llm-trajectories"
FORMAT_VERSION = 1

#: columns of a shard: name -> (arrow type name, nullable)
COLUMNS = {
    "idx": ("int64", False),
    "question": ("string", True),
    "prompt_ids": ("list<int32>", False),
    "output_ids": ("list<int32>", False),
    "order": ("list<int32>", False),
    "is_correct": ("bool", False),
    "attempt": ("int32", True),
    "temperature": ("float64", True),
    "generated_text": ("string", True),
    "gold": ("string", True),
}
REQUIRED = ("idx", "prompt_ids", "output_ids", "order")


class TrajectoryError(D3LLMError, ValueError):
    """A trajectory folder or file is missing, corrupted, inconsistent or made for another teacher."""


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installation
        raise D3LLMError("trajectory sets are Parquet files: install pyarrow (pip install 'd3llm[distill]')") from None
    return pyarrow


def files_hash(folder: Path, names: tuple[str, ...]) -> str | None:
    """SHA-256 over the named files of ``folder`` that exist (name and content), None if none does."""
    h, found = hashlib.sha256(), False
    for name in names:
        file = Path(folder) / name
        if file.is_file():
            found = True
            h.update(name.encode() + b"\0")
            h.update(sha256_file(file).encode())
    return h.hexdigest() if found else None


def model_hashes(folder: str | os.PathLike) -> dict[str, str | None]:
    """``teacher_hash`` (config.json and weight files) and ``tokenizer_hash`` (tokenizer files) of a model folder."""
    folder = Path(folder)
    weights = tuple(sorted(p.name for p in folder.glob("*.safetensors"))) + ("model.safetensors.index.json",
                                                                              "pytorch_model.bin")
    return {"teacher_hash": files_hash(folder, ("config.json", *weights)),
            "tokenizer_hash": files_hash(folder, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                  "vocab.json", "merges.txt", "chat_template.jinja"))}


def shard_paths(folder: Path, shard: int) -> tuple[Path, Path]:
    base = Path(folder) / SHARDS / f"shard-{shard:05d}"
    return base.with_suffix(".parquet"), base.with_suffix(".json")


def state_at(prompt_ids, output_ids, order, k: int, mask_id: int) -> list[int]:
    """The teacher's canvas after step ``k`` (0-based): the prompt, then ``output_ids[j]`` where ``order[j] <= k``
    and ``mask_id`` elsewhere."""
    out = np.asarray(output_ids)
    return list(prompt_ids) + np.where(np.asarray(order) <= k, out, mask_id).tolist()


# ------------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------------

def _schema():
    pa = require_pyarrow()
    kinds = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string(), "bool": pa.bool_(),
             "float64": pa.float64(), "list<int32>": pa.list_(pa.int32())}
    return pa.schema([pa.field(name, kinds[kind], nullable=nullable) for name, (kind, nullable) in COLUMNS.items()])


def write_shard(file: Path, rows: list[dict]) -> dict:
    """Write ``rows`` (dicts with :data:`COLUMNS`) as one Parquet file, atomically; returns its size and SHA-256."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{name: row.get(name) for name in COLUMNS} for row in rows], schema=_schema())
    make_folder(file.parent)
    atomic_write(file, lambda p: pq.write_table(table, str(p), compression="zstd"))
    return {"file": f"{SHARDS}/{file.name}", "rows": len(rows), "size": file.stat().st_size,
            "sha256": sha256_file(file)}


def write_json(file: Path, obj: dict) -> None:
    make_folder(file.parent)
    atomic_write_text(file, json.dumps(obj, indent=2) + "\n")


def read_json(file: Path, what: str) -> dict:
    if not Path(file).exists():
        raise TrajectoryError(f"{file} does not exist; expected the {what}")
    try:
        data = read_json_file(file, TrajectoryError)
    except TrajectoryError as exc:
        raise TrajectoryError(f"{exc}; expected the {what}") from None
    if not isinstance(data, dict):
        raise TrajectoryError(f"{file}: expected a JSON object (the {what}), got {type(data).__name__}")
    return data


def verify_shard(folder: Path, entry: dict) -> None:
    """Check a shard file against its manifest entry (size, SHA-256); raises TrajectoryError."""
    file = Path(folder) / entry["file"]
    if not file.is_file():
        raise TrajectoryError(f"{file} is missing: the manifest {Path(folder) / MANIFEST} lists it")
    if file.stat().st_size != entry["size"] or sha256_file(file) != entry["sha256"]:
        raise TrajectoryError(f"{file} is corrupted or was changed: its size or SHA-256 differs from "
                              f"{Path(folder) / MANIFEST}; rerun the extraction to rebuild it")


# ------------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class TrajectorySet:
    """A verified trajectory folder in memory.

    Attributes:
        manifest: the folder's manifest (teacher, tokenizer, decoder, source, shards).
        idx: ``[n]`` source row of each record.
        prompt_ids: per record, the prompt ids the teacher saw.
        output_ids: ``[n, N]`` generated ids (EOS padding included).
        order: ``[n, N]`` commit step of each generated position (``N`` = never committed).
        columns: every other column (``is_correct``, ``attempt``, ``temperature``, ``generated_text``, ``question``,
            ``gold``) as Python lists.
    """

    folder: Path
    manifest: dict
    idx: np.ndarray
    prompt_ids: list[list[int]]
    output_ids: np.ndarray
    order: np.ndarray
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def gen_length(self) -> int:
        return self.output_ids.shape[1]

    @property
    def mask_id(self) -> int:
        return int(self.manifest["mask_id"])

    def state(self, i: int, k: int) -> list[int]:
        """The teacher's full canvas (prompt + generation) of record ``i`` after step ``k``."""
        return state_at(self.prompt_ids[i], self.output_ids[i], self.order[i], k, self.mask_id)

    def row(self, i: int) -> dict:
        return {"idx": int(self.idx[i]), "prompt_ids": list(self.prompt_ids[i]),
                "output_ids": self.output_ids[i].tolist(), "order": self.order[i].tolist(),
                **{k: v[i] for k, v in self.columns.items()}}

    def rows(self) -> list[dict]:
        return [self.row(i) for i in range(len(self))]


def read_trajectories(folder: str | os.PathLike) -> TrajectorySet:
    """Read and check a trajectory folder: the manifest, every shard against its checksum, the columns, and that
    every ``order`` is a valid trajectory (same length as ``output_ids``, values in ``[0, N]``)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrajectoryError(f"trajectory folder {folder} does not exist")
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        hint = (" (an extraction is still running or was interrupted: rerun the same command to finish it)"
                if (folder / PLAN).is_file() else "")
        raise TrajectoryError(f"{folder} has no {MANIFEST}; expected a folder written by 'd3llm trajectories "
                              f"extract' or 'import-reference'{hint}")
    manifest = read_json(manifest_file, "trajectory manifest")
    if manifest.get("format") != FORMAT:
        raise TrajectoryError(f"{manifest_file}: 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise TrajectoryError(f"{manifest_file}: 'shards' must be a list of shard entries")
    tables = []
    for entry in shards:
        verify_shard(folder, entry)
        file = folder / entry["file"]
        table = pq.read_table(str(file))
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise TrajectoryError(f"{file}: missing column(s) {', '.join(missing)}; a trajectory shard needs "
                                  f"{', '.join(REQUIRED)}")
        tables.append((file, table))
    n_total = sum(t.num_rows for _, t in tables)
    if n_total == 0:
        raise TrajectoryError(f"{folder} holds no trajectories (every shard is empty)")

    idx, prompts, outputs, orders = [], [], [], []
    columns: dict[str, list] = {c: [] for c in COLUMNS if c not in REQUIRED}
    gen_length = None
    for file, table in tables:
        data = table.to_pydict()
        for r in range(table.num_rows):
            out, order = data["output_ids"][r], data["order"][r]
            if gen_length is None:
                gen_length = len(out)
            if len(out) != gen_length:
                raise TrajectoryError(f"{file}: row idx={data['idx'][r]} has {len(out)} output ids, other rows "
                                      f"{gen_length}; every row of a set has the same generation length")
            if order is None or len(order) != len(out):
                raise TrajectoryError(f"{file}: row idx={data['idx'][r]}: 'order' has "
                                      f"{None if order is None else len(order)} values, expected one per output id "
                                      f"({len(out)})")
            if order and (min(order) < 0 or max(order) > gen_length):
                raise TrajectoryError(f"{file}: row idx={data['idx'][r]}: 'order' values must lie in [0, "
                                      f"{gen_length}] (a step index, or {gen_length} = never committed); found "
                                      f"{min(order)}..{max(order)}")
            idx.append(data["idx"][r])
            prompts.append(list(data["prompt_ids"][r]))
            outputs.append(out)
            orders.append(order)
            for c in columns:
                columns[c].append(data[c][r] if c in data else None)
    return TrajectorySet(folder=folder, manifest=manifest, idx=np.asarray(idx, dtype=np.int64), prompt_ids=prompts,
                         output_ids=np.asarray(outputs, dtype=np.int64), order=np.asarray(orders, dtype=np.int64),
                         columns=columns)


def write_trajectory_set(folder: Path, rows: list[dict], manifest: dict, shard_size: int = 4096) -> dict:
    """Write finished ``rows`` as shards plus a manifest in one go (import-reference); returns the manifest."""
    make_folder(folder)
    entries = []
    for shard, start in enumerate(range(0, max(len(rows), 1), shard_size)):
        entries.append(write_shard(shard_paths(folder, shard)[0], rows[start:start + shard_size]))
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "rows": len(rows), "shards": entries}
    write_json(folder / MANIFEST, manifest)
    return manifest
