"""Datasets the commands read: the built-in ``arith`` task or a user JSONL file with ``question`` and ``answer``.

A dataset *spec* names one:

* ``arith`` / ``arith:train`` / ``arith:test``: the built-in task (:mod:`d3llm.tasks.arith`); without a split,
  commands use ``train`` for training and ``test`` for evaluation.
* a path to a ``.jsonl`` file: one JSON object per line with string fields ``question`` and ``answer`` (GSM8K's
  layout: the answer ends with ``#### N``; otherwise its last number is the gold answer). Blank lines are skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from d3llm.errors import ConfigError
from d3llm.files import decode_utf8
from d3llm.tasks.arith import SPLITS, make_problem
from d3llm.tasks.scoring import reference_answer

DEFAULT_TEST_SIZE = 500


@dataclass(frozen=True)
class Example:
    """A question, its reference ``answer`` text and the normalised ``gold`` number; ``source`` says where from."""

    question: str
    answer: str
    gold: str | None
    source: str = ""


class ArithDataset:
    """``size`` problems of one split of the built-in task. Training items are generated on access (problem ``i``
    is a pure function of ``(seed, split, i)``, so the order is already random); ``unique=True`` (the default for
    ``test``) materialises ``size`` problems with distinct skeletons."""

    iid = True

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, unique: bool | None = None):
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} of the built-in task 'arith'; expected one of {list(SPLITS)}")
        self.split, self.seed = split, seed
        self.size = size if size is not None else (DEFAULT_TEST_SIZE if split == "test" else 10**9)
        if self.size <= 0:
            raise ConfigError(f"dataset size must be positive, got {self.size}")
        self.name = f"arith:{split}"
        self._items: list[Example] | None = None
        if unique if unique is not None else split == "test":
            self._items = self._unique()

    def _unique(self) -> list[Example]:
        seen, items, i = set(), [], 0
        while len(items) < self.size:
            p = make_problem(self.split, i, self.seed)
            i += 1
            if p.skeleton in seen:
                continue
            seen.add(p.skeleton)
            items.append(Example(p.question, p.answer, str(p.target), f"{self.name}#{p.index}"))
        return items

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.size:
            raise IndexError(i)
        if self._items is not None:
            return self._items[i]
        p = make_problem(self.split, i, self.seed)
        return Example(p.question, p.answer, str(p.target), f"{self.name}#{i}")


class ListDataset:
    """Examples held in memory (a loaded JSONL file)."""

    iid = False

    def __init__(self, items: list[Example], name: str):
        self.items, self.name = items, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        return self.items[i]


def iter_jsonl(file: Path):
    """``(line number, object)`` for every non-blank line of a JSONL file; a line that is not UTF-8 or not a JSON
    object is a ConfigError naming the file and line."""
    with open(file, "rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            line = decode_utf8(raw, file, ConfigError, offset=offset, line=lineno)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{file}:{lineno}: not valid JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def load_jsonl(path: str | os.PathLike, scored: bool = False) -> ListDataset:
    """Read a JSONL file of ``{"question": str, "answer": str}`` rows; errors name the file, line and field.

    ``scored=True`` (evaluation) also requires every answer to hold a gold number (a ``#### N`` line or a last
    number), so a file that cannot be scored fails here, before any decoding."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"dataset file '{file}' does not exist; expected a JSONL file with 'question' and 'answer'")
    items: list[Example] = []
    for lineno, row in iter_jsonl(file):
        for key in ("question", "answer"):
            if key not in row:
                raise ConfigError(f"{file}:{lineno}: field '{key}' is missing; each row needs 'question' and "
                                  f"'answer' strings (found {sorted(row)})")
            if not isinstance(row[key], str) or not row[key].strip():
                raise ConfigError(f"{file}:{lineno}: field '{key}' must be a non-empty string, got {row[key]!r}")
        gold = reference_answer(row["answer"])
        if scored and gold is None:
            raise ConfigError(f"{file}:{lineno}: field 'answer' ({row['answer'][:60]!r}) holds no number to score "
                              f"against; evaluation needs a '#### N' line or a final number in every answer")
        items.append(Example(row["question"], row["answer"], gold, f"{file}:{lineno}"))
    if not items:
        raise ConfigError(f"{file} holds no rows; expected JSON objects with 'question' and 'answer', one per line")
    return ListDataset(items, str(file))


def load_dataset(spec: str, default_split: str = "train", size: int | None = None, seed: int = 0,
                 scored: bool = False):
    """Resolve a dataset spec (``arith``, ``arith:test``, or a JSONL path). ``size`` limits a file to its first
    ``size`` rows and sets the number of built-in problems; ``seed`` picks the built-in problems; ``scored``: every
    answer must have a gold number (see :func:`load_jsonl`)."""
    if spec == "arith" or spec.startswith("arith:"):
        split = spec.split(":", 1)[1] if ":" in spec else default_split
        return ArithDataset(split, size, seed)
    if not (spec.endswith(".jsonl") or Path(spec).expanduser().is_file()):
        raise ConfigError(f"dataset {spec!r} is neither the built-in task ('arith', 'arith:train', 'arith:test') "
                          f"nor a JSONL file")
    data = load_jsonl(spec, scored=scored)
    if size is not None:
        if size <= 0:
            raise ConfigError(f"dataset size must be positive, got {size}")
        data.items = data.items[:size]
    return data


def write_jsonl(path: str | os.PathLike, examples) -> Path:
    """Write examples (or :class:`~d3llm.tasks.arith.Problem` rows) as a JSONL file the loader reads back."""
    from d3llm.files import atomic_write_text

    lines = []
    for ex in examples:
        row = ex.to_json() if hasattr(ex, "to_json") else {"question": ex.question, "answer": ex.answer}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)
