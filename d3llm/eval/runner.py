"""Accuracy and speed of one decoder setting on a question-answering dataset (SPEC 8).

* **Accuracy**: GSM8K-style exact match of the generated text, strict (the ``#### N`` line) and flexible (the last
  number), in percent.
* **TPF** (tokens per forward): generated tokens before the first end-of-text, summed over requests, divided by the
  forward passes of those requests. Prompt tokens and end-of-text padding are never counted.
* **Tokens/s**: the same tokens divided by the wall time of the timed generation calls (a warm-up decode of a
  few rows runs first and is not timed).

Every request also yields a record (prompt length, generated tokens, NFE, wall time of its batch, correctness).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    records: list[Record] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    @property
    def tpf(self) -> float:
        return self.tokens / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        return {"dataset": self.dataset, "method": self.method, "params": self.params, "n": self.n,
                "strict": round(self.strict, 2), "flexible": round(self.flexible, 2), "tpf": round(self.tpf, 3),
                "tokens_per_s": round(self.tokens_per_s, 1), "tokens": self.tokens, "nfe": self.nfe,
                "wall_s": round(self.wall_s, 3), "model_s": round(self.model_s, 3), "batch_size": self.batch_size}

    def to_dict(self, records: bool = True) -> dict:
        out = {**self.summary(), "environment": self.environment}
        if records:
            out["records"] = [asdict(r) for r in self.records]
        return out


WARMUP_ROWS = 8  # rows of the untimed warm-up decode


def evaluate(model, tokenizer, dataset, method: str | None = None, params: dict | None = None, *, batch_size: int = 8,
             limit: int | None = None, seed: int | None = None, progress: bool = False, warmup: bool = True,
             on_batch: Callable[[int, int, int], None] | None = None) -> EvalResult:
    """Decode every question of ``dataset`` (or its first ``limit``) with ``method`` (None: the model folder's
    default) and ``params`` (unset ones: the folder's defaults), and score the answers.

    ``warmup``: decode the first few rows (:data:`WARMUP_ROWS`) once, untimed, before the timed run.
    ``on_batch(requests, tokens, nfe)`` is called after every batch with that batch's counts (a caller's own
    progress display).
    """
    from d3llm.decoding.defaults import resolve_method
    from d3llm.errors import ConfigError

    params = dict(params or {})
    method = resolve_method(model, method)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n <= 0:
        raise ConfigError(f"nothing to evaluate: the dataset has {len(dataset)} examples and limit is {limit}")
    examples = [dataset[i] for i in range(n)]
    unscored = [getattr(ex, "source", "") or str(i) for i, ex in enumerate(examples) if ex.gold is None]
    if unscored:
        raise ConfigError(f"{len(unscored)} example(s) have no gold answer to score against (first: {unscored[0]}); "
                          f"every answer needs a '#### N' line or a final number")
    prompts = [encode_conversation(tokenizer, ex.question, getattr(ex, "history", ())) for ex in examples]

    if warmup:  # not timed; a few rows load the code paths and the allocator as well as a whole batch does
        d3llm.generate(model, prompts[:min(batch_size, WARMUP_ROWS)], method, seed=seed, **params)
    outputs: list[list[int]] = []
    nfes: list[int] = []
    walls: list[float] = []
    wall = model_time = 0.0
    bar = _progress(progress, n, f"{method} on {getattr(dataset, 'name', 'dataset')}")
    for start in range(0, n, batch_size):
        result = d3llm.generate(model, prompts[start : start + batch_size], method, seed=seed, **params)
        outputs.extend(result.tokens)
        nfes.extend(result.nfe.tolist())
        walls.extend([result.wall_time] * len(result.tokens))
        wall += result.wall_time
        model_time += result.model_time
        if bar is not None:
            bar.advance(len(result.tokens), tokens=sum(len(t) for t in outputs), nfe=sum(nfes))
        if on_batch is not None:
            on_batch(len(result.tokens), int(result.num_tokens.sum()), int(result.nfe.sum()))
    if bar is not None:
        bar.close()

    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in outputs]
    golds = [ex.gold for ex in examples]
    s = score(texts, golds)
    records = []
    for i, (ex, ids, text, nfe, w) in enumerate(zip(examples, outputs, texts, nfes, walls)):
        gold = ex.gold
        records.append(Record(i, getattr(ex, "source", ""), len(prompts[i]), len(ids), nfe, w, text, ex.gold,
                              extract_answer(text, "strict"), is_correct(text, gold, "strict"),
                              is_correct(text, gold, "flexible")))
    return EvalResult(dataset=getattr(dataset, "name", "dataset"), method=result.method, params=result.params, n=n,
                      strict=s.strict, flexible=s.flexible, tokens=sum(len(t) for t in outputs), nfe=sum(nfes),
                      wall_s=wall, model_s=model_time, batch_size=batch_size, records=records,
                      environment=environment(model))


class _Bar:
    """A rich progress bar showing requests, TPF and tokens/s."""

    def __init__(self, total: int, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("TPF {task.fields[tpf]}"), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task(title, total=total, tpf="-")
        self.start = time.perf_counter()
        self.progress.start()

    def advance(self, k: int, tokens: int, nfe: int) -> None:
        self.progress.update(self.task, advance=k, tpf=f"{tokens / max(nfe, 1):.2f}")

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int, title: str) -> _Bar | None:
    return _Bar(total, title) if enabled else None
