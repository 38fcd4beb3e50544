"""Accuracy and speed of one decoder setting on a question-answering dataset (SPEC 8).

* **Accuracy**: GSM8K-style exact match of the generated text, strict (the ``#### N`` line) and flexible (the last
  number), in percent.
* **TPF** (tokens per forward): generated tokens before the first end-of-text, summed over requests, divided by the
  forward passes of those requests. Prompt tokens and end-of-text padding are never counted.
* **Tokens/s**: the same tokens divided by the wall time of the timed generation calls (a warm-up decode of a
  few rows runs first and is not timed).

Every request also yields a record (prompt length, generated tokens, NFE, wall time of its batch, correctness).
A run can be resumed batch by batch (:class:`Batch`, :func:`eval_plan`; ``d3llm eval --out`` does it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import d3llm
from d3llm.eval.environment import environment
from d3llm.tasks.scoring import extract_answer, is_correct, score
from d3llm.models.prompts import encode_conversation


@dataclass
class Record:
    index: int
    source: str
    prompt_tokens: int
    generated_tokens: int
    nfe: int
    batch_wall_s: float
    prediction: str
    gold: str | None
    extracted: str | None
    strict: bool
    flexible: bool


@dataclass
class EvalResult:
    """Summary figures, the resolved decoder settings, per-request records and the environment stamp."""

    dataset: str
    method: str
    params: dict
    n: int
    strict: float
    flexible: float
    tokens: int
    nfe: int
    wall_s: float
    model_s: float
    batch_size: int
    positions: int = 0  # positions forwarded (0 for batches saved before they were counted)
    records: list[Record] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    @property
    def tpf(self) -> float:
        return self.tokens / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def positions_per_token(self) -> float:
        """Positions forwarded per generated token: what a token cost in model compute (see TPF for forwards)."""
        return self.positions / self.tokens if self.tokens else 0.0

    def summary(self) -> dict:
        return {"dataset": self.dataset, "method": self.method, "params": self.params, "n": self.n,
                "strict": round(self.strict, 2), "flexible": round(self.flexible, 2), "tpf": round(self.tpf, 3),
                "positions_per_token": round(self.positions_per_token, 2), "tokens_per_s": round(self.tokens_per_s, 1),
                "tokens": self.tokens, "nfe": self.nfe,
                "wall_s": round(self.wall_s, 3), "model_s": round(self.model_s, 3), "batch_size": self.batch_size}

    def to_dict(self, records: bool = True) -> dict:
        out = {**self.summary(), "environment": self.environment}
        if records:
            out["records"] = [asdict(r) for r in self.records]
        return out


WARMUP_ROWS = 8  # rows of the untimed warm-up decode


@dataclass
class Batch:
    """One decoded batch: its first row, each row's generated ids and forwards, the batch's wall and model time and
    the resolved decoder. The records and figures of its rows are computed from these alone, so a resumed evaluation
    rebuilds them exactly from the batches an earlier run saved."""

    start: int
    tokens: list[list[int]]
    nfe: list[int]
    wall_s: float
    model_s: float
    method: str
    params: dict
    positions: list[int] = field(default_factory=list)  # per row (empty in files saved before it was recorded)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data, source: str) -> Batch:
        """A batch read back from ``source`` (a partial-results file); a malformed one is a ConfigError."""
        from d3llm.errors import ConfigError

        try:
            batch = cls(**data)
            ok = (len(batch.tokens) == len(batch.nfe) > 0 and isinstance(batch.params, dict)
                  and all(isinstance(t, int) for row in batch.tokens for t in row))
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"{source}: a saved batch is malformed (expected {', '.join(cls.__dataclass_fields__)} "
                              f"with one token list and one NFE per row); delete {source} to start over")
        return batch


def _count(dataset, limit: int | None) -> int:
    from d3llm.errors import ConfigError

    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n <= 0:
        raise ConfigError(f"nothing to evaluate: the dataset has {len(dataset)} examples and limit is {limit}")
    return n


def model_identity(model, folder) -> dict:
    """What a resumed run must decode with again: the model folder, a fingerprint of its files, device and dtype."""
    from pathlib import Path

    from d3llm.resume import model_fingerprint

    return {"path": str(Path(folder).expanduser().resolve()), "files": model_fingerprint(Path(folder).expanduser()),
            "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}


def questions_key(dataset) -> str:
    """A short hash of the dataset's examples (questions, earlier turns, gold answers), all of them: a changed
    ``limit`` is reported as itself, not as other questions."""
    from d3llm.resume import canonical_key

    return canonical_key([[ex.question, list(getattr(ex, "history", ())), ex.gold]
                          for ex in (dataset[i] for i in range(len(dataset)))])[:16]


def eval_plan(model, folder, dataset, method: str | None = None, params: dict | None = None, *, batch_size: int = 8,
              limit: int | None = None, seed: int | None = None) -> dict:
    """Every setting the figures of :func:`evaluate` depend on, as a resumed ``d3llm eval --out`` compares them:
    the model (:func:`model_identity`), the task and a hash of its questions, the number of problems, the resolved
    method and parameters, the batch size and the seed. Bad decoder parameters fail here, before any decoding."""
    from d3llm.decoding.defaults import resolve_decoder

    method, _, resolved = resolve_decoder(model, method, dict(params or {}))
    n = _count(dataset, limit)
    return {"model": model_identity(model, folder), "task": getattr(dataset, "name", "dataset"),
            "questions": questions_key(dataset), "limit": n, "method": method, "params": resolved.as_dict(),
            "batch_size": batch_size, "seed": seed}


def evaluate(model, tokenizer, dataset, method: str | None = None, params: dict | None = None, *, batch_size: int = 8,
             limit: int | None = None, seed: int | None = None, progress=False, warmup: bool = True,
             resume_from: Mapping[int, Batch] | None = None,
             save_batch: Callable[[Batch], None] | None = None) -> EvalResult:
    """Decode every question of ``dataset`` (or its first ``limit``) with ``method`` (None: the model folder's
    default) and ``params`` (unset ones: the folder's defaults), and score the answers.

    ``warmup``: decode the first few rows (:data:`WARMUP_ROWS`) once, untimed, before the timed run (skipped when no
    batch is left to decode). ``progress``: True draws a :class:`~d3llm.eval.progress.ProblemBar`; a caller's own
    bar (``step(finished, filled)`` within a batch, ``advance(requests, tokens, nfe)`` after it) is updated instead.
    ``resume_from``: batches an earlier run decoded (by first row), not decoded again; ``save_batch(batch)`` is called
    after every batch decoded here (to save it). Batches always start at multiples of ``batch_size``, so a resumed
    evaluation decodes the same batches as an uninterrupted one.
    """
    from d3llm.decoding.defaults import resolve_method, with_tokenizer_defaults
    from d3llm.errors import ConfigError
    from d3llm.eval.progress import ProblemBar, step_watcher

    params = with_tokenizer_defaults(model, method, dict(params or {}), tokenizer)
    method = resolve_method(model, method)
    n = _count(dataset, limit)
    examples = [dataset[i] for i in range(n)]
    unscored = [getattr(ex, "source", "") or str(i) for i, ex in enumerate(examples) if ex.gold is None]
    if unscored:
        raise ConfigError(f"{len(unscored)} example(s) have no gold answer to score against (first: {unscored[0]}); "
                          f"every answer needs a '#### N' line or a final number")
    prompts = [encode_conversation(tokenizer, ex.question, getattr(ex, "history", ())) for ex in examples]
    starts = range(0, n, batch_size)
    done = {s: b for s, b in (resume_from or {}).items() if s in starts}
    for start, batch in done.items():
        if len(batch.tokens) != len(prompts[start:start + batch_size]):
            raise ConfigError(f"a saved batch at row {start} has {len(batch.tokens)} rows, expected "
                              f"{len(prompts[start:start + batch_size])}")
    todo = [s for s in starts if s not in done]

    if warmup and todo:  # not timed; a few rows load the code paths and the allocator as well as a whole batch does
        d3llm.generate(model, prompts[:min(batch_size, WARMUP_ROWS)], method, seed=seed, **params)
    bar = ProblemBar(n, f"{method} on {getattr(dataset, 'name', 'dataset')}",
                     done=sum(len(b.tokens) for b in done.values())) if progress is True else (progress or None)
    mask_id = getattr(model.config, "mask_token_id", None)
    if bar is not None and done:  # the running TPF includes the batches kept from before (already counted done)
        bar.advance(0, sum(len(ids) for b in done.values() for ids in b.tokens), sum(sum(b.nfe) for b in done.values()))
    try:
        for start in todo:
            chunk = prompts[start : start + batch_size]
            watch = step_watcher(bar, len(chunk), mask_id) if bar is not None else None
            result = d3llm.generate(model, chunk, method, seed=seed, callback=watch, **params)
            done[start] = batch = Batch(start, [[int(t) for t in ids] for ids in result.tokens], result.nfe.tolist(),
                                        result.wall_time, result.model_time, result.method, result.params,
                                        result.positions.tolist())
            if save_batch is not None:
                save_batch(batch)
            if bar is not None:
                bar.advance(len(chunk), int(result.num_tokens.sum()), int(result.nfe.sum()))
    finally:
        if progress is True:
            bar.close()

    batches = [done[s] for s in starts]
    outputs = [ids for b in batches for ids in b.tokens]
    nfes = [nfe for b in batches for nfe in b.nfe]
    walls = [b.wall_s for b in batches for _ in b.tokens]
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in outputs]
    golds = [ex.gold for ex in examples]
    s = score(texts, golds)
    records = []
    for i, (ex, ids, text, nfe, w) in enumerate(zip(examples, outputs, texts, nfes, walls)):
        gold = ex.gold
        records.append(Record(i, getattr(ex, "source", ""), len(prompts[i]), len(ids), nfe, w, text, ex.gold,
                              extract_answer(text, "strict"), is_correct(text, gold, "strict"),
                              is_correct(text, gold, "flexible")))
    last = batches[-1]
    return EvalResult(dataset=getattr(dataset, "name", "dataset"), method=last.method, params=last.params, n=n,
                      strict=s.strict, flexible=s.flexible, tokens=sum(len(t) for t in outputs), nfe=sum(nfes),
                      wall_s=sum(b.wall_s for b in batches), model_s=sum(b.model_s for b in batches),
                      batch_size=batch_size, positions=sum(sum(b.positions) for b in batches), records=records,
                      environment=environment(model))
