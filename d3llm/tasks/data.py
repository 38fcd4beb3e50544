"""Datasets the commands read: the built-in ``arith`` task or a user JSONL file with ``question`` and ``answer``.

A dataset *spec* names one:

* ``arith`` / ``arith:train`` / ``arith:test``: the built-in task (:mod:`d3llm.tasks.arith`); without a split,
  commands use ``train`` for training and ``test`` for evaluation. Options follow a third colon, comma-separated:
  ``turns=N`` (each example is a conversation of N questions: N - 1 earlier question/answer turns from the same
  split, then the question; default 1) and ``steps=1`` or ``steps=1-2`` (the split's distinct problems of those
  step counts only, materialised: about 390 held-out and 6,000 training problems of one step), e.g.
  ``arith:test:turns=2``, ``arith:test:steps=1`` or ``arith:train:steps=1``. The same held-out problems end every
  ``turns`` setting, so one-turn and two-turn accuracy are measured on the same last questions.
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
from d3llm.tasks.arith import (MAX_TURNS, SPLITS, is_one_step, make_conversation, make_problem,
                               max_answer_tokens)
from d3llm.tasks.scoring import reference_answer

DEFAULT_TEST_SIZE = 500
STALE_LIMIT = 4000  # a filtered split is exhausted after this many repeats in a row


@dataclass(frozen=True)
class Example:
    """A question, its reference ``answer`` text and the normalised ``gold`` number; ``source`` says where from;
    ``history``: the earlier (question, answer) turns of the conversation, oldest first (empty: a single turn)."""

    question: str
    answer: str
    gold: str | None
    source: str = ""
    history: tuple[tuple[str, str], ...] = ()


class ArithDataset:
    """``size`` problems of one split of the built-in task. Training items are generated on access (problem ``i``
    is a pure function of ``(seed, split, i)``, so the order is already random); ``unique=True`` (the default for
    ``test``) materialises ``size`` problems with distinct skeletons. ``turns``: questions per example (the earlier
    ones answered in ``Example.history``); ``steps``: keep only problems with these step counts (materialises the
    split: every distinct problem of those step counts, ``size`` at most, in index order; a training split of
    one-step problems holds about 6,000)."""

    iid = True

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, unique: bool | None = None,
                 turns: int = 1, steps: tuple[int, ...] | None = None):
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} of the built-in task 'arith'; expected one of {list(SPLITS)}")
        self.split, self.seed = split, seed
        self.size = size if size is not None else (DEFAULT_TEST_SIZE if split == "test" else 10**9)
        self._at_most = size is None and steps is not None  # a filtered split may hold fewer than the default
        if self.size <= 0:
            raise ConfigError(f"dataset size must be positive, got {self.size}")
        check_turns(turns)
        self.turns, self.steps = turns, steps
        self.name = f"arith:{split}" + _options_suffix(turns, steps)
        self._indices: list[int] | None = None
        if unique if unique is not None else (split == "test" or steps is not None):
            self._indices = self._unique()
        elif steps is not None:
            raise ConfigError("the 'steps' option of the built-in task materialises the split's distinct problems; "
                              "it cannot filter the endless training stream (unique=False)")

    def _unique(self) -> list[int]:
        seen, indices, i, stale = set(), [], 0, 0
        limit = max(200 * self.size, 10**5)
        while len(indices) < self.size:
            if i >= limit or (self._at_most and stale > STALE_LIMIT):
                if self._at_most and indices:
                    self.size = len(indices)
                    break
                raise ConfigError(f"{self.name}: only {len(indices)} distinct problems found in the first {limit:,} "
                                  f"of the split; ask for at most that many")
            if self.steps is not None and not self._may_have(is_one_step(self.split, i, self.seed)):
                i += 1  # the cheap draw already rules it out
                continue
            p = make_problem(self.split, i, self.seed)
            i += 1
            if self.steps is not None and p.steps not in self.steps:
                continue
            if p.skeleton in seen:
                stale += 1
                continue
            stale = 0
            seen.add(p.skeleton)
            indices.append(p.index)
        return indices

    def _may_have(self, one_step: bool) -> bool:
        """Whether a problem with (or without) one step may have a step count this dataset keeps."""
        return 1 in self.steps if one_step else max(self.steps) > 1

    def __len__(self) -> int:
        return self.size

    @property
    def max_answer_tokens(self) -> int:
        """The most task-tokenizer tokens one of this dataset's answers takes."""
        return max_answer_tokens(max(self.steps)) if self.steps else max_answer_tokens()

    def __getitem__(self, i: int) -> Example:
        return self.example(i)

    def example(self, i: int, turns: int | None = None) -> Example:
        """Item ``i`` as a conversation of ``turns`` questions (default: the dataset's ``turns``)."""
        if not 0 <= i < self.size:
            raise IndexError(i)
        index = self._indices[i] if self._indices is not None else i
        *earlier, p = make_conversation(self.split, index, self.turns if turns is None else turns, self.seed)
        history = tuple((e.question, e.answer) for e in earlier)
        return Example(p.question, p.answer, str(p.target), f"{self.name}#{p.index}", history)


def check_turns(turns: int) -> None:
    if not isinstance(turns, int) or not 1 <= turns <= MAX_TURNS:
        raise ConfigError(f"turns must be an integer from 1 to {MAX_TURNS} (questions per conversation), got {turns!r}")


def _options_suffix(turns: int, steps: tuple[int, ...] | None) -> str:
    opts = ([f"turns={turns}"] if turns != 1 else []) + (
        [f"steps={min(steps)}" + (f"-{max(steps)}" if max(steps) > min(steps) else "")] if steps else [])
    return ":" + ",".join(opts) if opts else ""


def parse_arith_spec(spec: str, default_split: str = "train") -> tuple[str, dict]:
    """``"arith:test:turns=2,steps=1"`` -> ``("test", {"turns": 2, "steps": (1,)})`` (see the module docstring)."""
    parts = spec.split(":", 2)
    split = parts[1] if len(parts) > 1 and parts[1] else default_split
    options: dict = {}
    for item in (parts[2].split(",") if len(parts) > 2 and parts[2] else []):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in ("turns", "steps"):
            raise ConfigError(f"dataset {spec!r}: unknown option {key!r} of the built-in task; expected turns=N or "
                              f"steps=A-B")
        try:
            if not sep:
                raise ValueError
            if key == "turns":
                options["turns"] = int(value)
                if not 1 <= options["turns"] <= MAX_TURNS:
                    raise ValueError
            elif key == "steps":
                low, _, high = value.partition("-")
                lo, hi = int(low), int(high or low)
                if not 1 <= lo <= hi <= 4:
                    raise ValueError
                options["steps"] = tuple(range(lo, hi + 1))
        except ValueError:
            raise ConfigError(f"dataset {spec!r}: option {item!r} is not valid; expected turns=N (1 to {MAX_TURNS}) "
                              f"or steps=A or steps=A-B (step counts 1 to 4)") from None
    return split, options


def is_arith_spec(spec: str) -> bool:
    return spec == "arith" or spec.startswith("arith:")


def with_turns(spec: str, turns: int | None, default_split: str = "test") -> str:
    """``spec`` with the built-in task's ``turns=N`` option set (``--turns`` of ``d3llm eval`` and ``d3llm sweep``):
    ``with_turns("arith", 2) == "arith:test:turns=2"``. A JSONL file brings its own ``history``: an error."""
    if turns is None:
        return spec
    if not is_arith_spec(spec):
        raise ConfigError(f"--turns builds conversations of the built-in task; {spec!r} is a file (give its rows a "
                          f"'history' list of earlier question/answer turns instead)")
    check_turns(turns)
    split, options = parse_arith_spec(spec, default_split)
    options["turns"] = turns
    return f"arith:{split}" + _options_suffix(options["turns"], options.get("steps"))


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


def _history(row: dict, file: Path, lineno: int) -> tuple[tuple[str, str], ...]:
    """The optional ``history`` field: earlier turns ``[{"question": str, "answer": str}, ...]``, oldest first."""
    turns = row.get("history", [])
    ok = isinstance(turns, list) and all(isinstance(t, dict) and isinstance(t.get("question"), str)
                                         and isinstance(t.get("answer"), str) for t in turns)
    if not ok:
        raise ConfigError(f"{file}:{lineno}: field 'history' must be a list of objects with 'question' and 'answer' "
                          f"strings (the earlier turns, oldest first)")
    return tuple((t["question"], t["answer"]) for t in turns)


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
        items.append(Example(row["question"], row["answer"], gold, f"{file}:{lineno}", _history(row, file, lineno)))
    if not items:
        raise ConfigError(f"{file} holds no rows; expected JSON objects with 'question' and 'answer', one per line")
    return ListDataset(items, str(file))


def load_dataset(spec: str, default_split: str = "train", size: int | None = None, seed: int = 0,
                 scored: bool = False):
    """Resolve a dataset spec (``arith``, ``arith:test``, or a JSONL path). ``size`` limits a file to its first
    ``size`` rows and sets the number of built-in problems; ``seed`` picks the built-in problems; ``scored``: every
    answer must have a gold number (see :func:`load_jsonl`)."""
    if is_arith_spec(spec):
        split, options = parse_arith_spec(spec, default_split)
        return ArithDataset(split, size, seed, **options)
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
        if getattr(ex, "history", ()):
            row["history"] = [{"question": q, "answer": a} for q, a in ex.history]
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)
