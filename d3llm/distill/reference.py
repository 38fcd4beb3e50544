"""Converters between our trajectory folders and the reference's trajectory rows (hao-ai-lab/d3LLM stage 1).

A reference row holds ``idx``, ``question``, ``prompt_ids``, ``trajectory`` (the N full canvases, prompt included,
after each of the teacher's N steps), ``final_output`` (the final canvas), ``generated_text``, ``llm_answer``,
``gt_answer`` and ``is_correct``. Importing keeps the prompt, the generated ids and, per generated position, the
first step whose canvas no longer holds the mask token there (``order``; N if none does), which is lossless for a
decode that never re-masks (SPEC 6.3). Exporting rebuilds every state from ``order``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from d3llm.distill import store
from d3llm.distill.store import TrajectoryError
from d3llm.files import atomic_write_text, read_text

LLADA_MASK_ID = 126336
FIELDS = ("idx", "prompt_ids", "trajectory", "final_output")


def _read_rows(file: Path) -> list[dict]:
    if not file.is_file():
        raise TrajectoryError(f"{file} does not exist; expected the reference's trajectory rows (JSON or JSONL)")
    text = read_text(file, TrajectoryError)
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise TrajectoryError(f"{file}: neither a JSON list nor JSON lines ({exc.msg})") from None
    if not rows:
        raise TrajectoryError(f"{file} holds no rows; expected reference trajectory rows")
    return rows


def _order_of(row: dict, where: str, mask_id: int) -> tuple[list[int], list[int]]:
    prompt, final, states = row["prompt_ids"], row["final_output"], row["trajectory"]
    p = len(prompt)
    if list(final[:p]) != list(prompt):
        raise TrajectoryError(f"{where}: 'final_output' does not start with 'prompt_ids'")
    n = len(final) - p
    if n <= 0:
        raise TrajectoryError(f"{where}: 'final_output' has no generated tokens after the {p} prompt ids")
    if not isinstance(states, list) or not states:
        raise TrajectoryError(f"{where}: 'trajectory' must be a non-empty list of canvases")
    gen = np.asarray([s[p:p + n] for s in states], dtype=np.int64)
    if gen.ndim != 2 or gen.shape[1] != n:
        raise TrajectoryError(f"{where}: every 'trajectory' state must hold the {p + n} ids of 'final_output'")
    unmasked = gen != mask_id
    order = np.where(unmasked.any(0), unmasked.argmax(0), n)
    return list(final[p:]), order.tolist()


def import_reference(file, out, teacher=None, mask_id: int | None = None) -> dict:
    """Convert a reference JSON/JSONL file into a trajectory folder ``out``; returns the manifest."""
    file, out = Path(file).expanduser(), Path(out).expanduser()
    hashes = {"teacher_hash": None, "tokenizer_hash": None}
    family, eos_id = "llada", None
    if teacher is not None:
        from d3llm.models.checkpoint import load_config

        config = load_config(teacher)
        hashes = store.model_hashes(teacher)
        family, eos_id = config.family, config.eos_token_id
        mask_id = config.mask_token_id if mask_id is None else mask_id
    mask_id = LLADA_MASK_ID if mask_id is None else mask_id
    if (out / store.MANIFEST).exists():
        raise TrajectoryError(f"{out} already holds a trajectory set; choose another --out")
    records = []
    for r, row in enumerate(_read_rows(file)):
        where = f"{file} row {r}"
        if not isinstance(row, dict):
            raise TrajectoryError(f"{where}: expected a JSON object")
        missing = [k for k in FIELDS if k not in row]
        if missing:
            raise TrajectoryError(f"{where}: missing field(s) {', '.join(missing)}; a reference row needs "
                                  f"{', '.join(FIELDS)}")
        output_ids, order = _order_of(row, where, mask_id)
        gt = row.get("gt_answer")
        records.append({"idx": int(row["idx"]), "question": row.get("question"), "prompt_ids": list(row["prompt_ids"]),
                        "output_ids": output_ids, "order": order, "is_correct": bool(row.get("is_correct", True)),
                        "attempt": None, "temperature": None, "generated_text": row.get("generated_text"),
                        "gold": None if gt is None else str(gt)})
    manifest = {**hashes, "family": family, "mask_id": mask_id, "eos_id": eos_id,
                "decoder": {"method": "reference (imported)"}, "chat_template": None,
                "source": {"spec": str(file), "sha256": store.sha256_file(file), "imported_from": "reference"}}
    return store.write_trajectory_set(out, records, manifest)


def export_reference(folder, out) -> int:
    """Write the trajectory folder's records as a JSON list of reference rows; returns the row count."""
    from d3llm.distill.extract import boxed_answer

    traj = store.read_trajectories(folder)
    rows = []
    for i in range(len(traj)):
        row = traj.row(i)
        n = len(row["output_ids"])
        text = row.get("generated_text")
        rows.append({"idx": row["idx"], "question": row.get("question"), "prompt_ids": row["prompt_ids"],
                     "trajectory": [traj.state(i, k) for k in range(n)],
                     "final_output": row["prompt_ids"] + row["output_ids"], "generated_text": text,
                     "llm_answer": boxed_answer(text) if text else None, "gt_answer": row.get("gold"),
                     "is_correct": bool(row.get("is_correct", True))})
    out = Path(out).expanduser()
    atomic_write_text(out, json.dumps(rows))
    return len(rows)
