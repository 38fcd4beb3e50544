"""Stage 1 of pseudo-trajectory distillation: the teacher's decoding order on every prompt (SPEC 6).

The teacher decodes block by block, **exactly one token per forward** (LLaDA: ``vanilla`` low-confidence
remasking with ``steps == gen_length``; Dream: ``block_entropy`` at threshold 0, i.e. the lowest-entropy mask), with
no cache and no early stop, batched through :func:`d3llm.generate`. Each record keeps the generated ids and
``order[j]``, the step at which position j was committed (``result.commit_step``). When a row has a gold answer the
teacher retries at temperatures 0.0, 0.1, ... until it is right and the last attempt is kept either way
(``is_correct`` says which, SPEC 6.4).

Work is cut into shards of ``shard_size`` source rows. Shard s is always decoded the same way (same rows, same
batches, sampling seeds derived from ``(seed, shard, attempt, batch)``), so the records do not depend on which
process decodes it or on interruptions: ``torchrun`` rank r takes shards r, r + W, ...; a rerun of the same command
skips every shard whose file matches its checksum record and redoes the others; the manifest is written once every
shard exists (after a process-group barrier, not by polling the filesystem).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from d3llm.distill import store
from d3llm.distill.config import ExtractConfig
from d3llm.distill.store import TrajectoryError
from d3llm.errors import ConfigError
from d3llm.files import check_output_file, make_folder
from d3llm.resume import check_plan
from d3llm.training import distributed as distm
from d3llm.training.objective import seed_of

TEMPERATURE_STEP = 0.1


# ------------------------------------------------------------------------------------------------------------------
# source rows
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class SourceRow:
    """One prompt to decode: a ``question`` (templated at extraction) or ready ``prompt_ids``, and the ``gold``
    answer when known."""

    idx: int
    question: str | None
    prompt_ids: list[int] | None
    gold: str | None
    response: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns of a conversation


def boxed_answer(text: str) -> str | None:
    """Content of the last brace-matched ``\\boxed{...}``."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    depth, begin = 0, None
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
            if begin is None:
                begin = i + 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0 and begin is not None:
                return text[begin:i].strip()
    return None


def _normalize(answer: str | None) -> str | None:
    from d3llm.tasks.scoring import normalize_number

    if answer is None:
        return None
    number = normalize_number(answer) if re.fullmatch(r"\s*-?[$0-9.,]+\s*", answer) else None
    return number if number is not None else re.sub(r"[,\s]", "", answer.strip().lower())


def gold_of(row: dict) -> str | None:
    """The gold answer of a source row: ``gt_answer`` (its boxed content if it has one), else the ``#### N`` or last
    number of ``answer``; None when neither is given."""
    from d3llm.tasks.scoring import reference_answer

    gt = row.get("gt_answer")
    if gt not in (None, ""):
        gt = str(gt)
        return boxed_answer(gt) if "\\boxed" in gt else gt.strip()
    if row.get("answer"):
        return reference_answer(str(row["answer"]))
    return None


def answer_matches(generated: str, gold: str | None) -> bool:
    """SPEC 6.4 on the generated text only: the last ``\\boxed{}`` if there is one, else the ``#### N`` line, else
    the last number, compared with ``gold`` after normalisation. No gold counts as correct."""
    from d3llm.tasks.scoring import reference_answer

    if gold is None or gold == "":
        return True
    pred = boxed_answer(generated) if "\\boxed" in generated else reference_answer(generated)
    return pred is not None and _normalize(pred) == _normalize(gold)


def load_source(spec: str, limit: int | None, data_seed: int) -> tuple[list[SourceRow], dict]:
    """The rows to decode and a description of where they came from (for the manifest)."""
    from d3llm.tasks.data import is_arith_spec

    if is_arith_spec(spec):
        from d3llm.tasks.data import load_dataset

        if limit is None:
            raise ConfigError("--data arith is an endless stream of problems: pass --limit N (how many to decode)")
        data = load_dataset(spec, "train", limit, data_seed)
        rows = [SourceRow(i, ex.question, None, ex.gold, ex.answer, ex.history)
                for i, ex in enumerate(data[i] for i in range(len(data)))]
        return rows, {"spec": data.name, "limit": limit, "data_seed": data_seed}
    file = Path(spec).expanduser()
    if not file.is_file():
        raise ConfigError(f"--data {spec!r} is neither the built-in task ('arith', 'arith:train') nor an existing "
                          f"JSONL file")
    from d3llm.tasks.data import iter_jsonl

    rows = []
    for lineno, obj in iter_jsonl(file):
        question, ids = obj.get("question"), obj.get("prompt_ids")
        if ids is not None:
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                                               for t in ids):
                raise ConfigError(f"{file}:{lineno}: 'prompt_ids' must be a non-empty list of token ids")
        elif not isinstance(question, str) or not question.strip():
            raise ConfigError(f"{file}:{lineno}: each row needs a non-empty string 'question' or a list "
                              f"'prompt_ids' (found {sorted(obj)})")
        response = obj.get("llm_response", obj.get("answer"))
        rows.append(SourceRow(len(rows), question if isinstance(question, str) else None, ids, gold_of(obj),
                              response if isinstance(response, str) else None))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise ConfigError(f"{file} holds no rows; expected JSON objects with 'question' (or 'prompt_ids'), one per line")
    return rows, {"spec": str(file), "sha256": store.sha256_file(file), "limit": limit}


# ------------------------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------------------------

def teacher_decoder(family: str, cfg: ExtractConfig) -> tuple[str, dict]:
    """The one-token-per-forward decoder of SPEC 6.2 for a model family: (method, parameters)."""
    params = dict(max_new_tokens=cfg.gen_length, block_size=cfg.block_size, steps=cfg.gen_length)
    if family == "dream":
        return "block_entropy", dict(params, threshold=0.0)
    return "vanilla", dict(params, remasking="low_confidence")


def prompt_of(row: SourceRow, tokenizer, chat_template: bool) -> list[int]:
    from d3llm.models.prompts import encode_conversation

    if row.prompt_ids is not None:
        return list(row.prompt_ids)
    if chat_template:
        return encode_conversation(tokenizer, row.question, row.history)
    return tokenizer.encode(row.question, add_special_tokens=False)


@dataclass
class ShardStats:
    rows: int = 0
    correct: int = 0
    retried: int = 0
    decodes: int = 0


def decode_shard(teacher, tokenizer, rows: list[SourceRow], prompts: list[list[int]], cfg: ExtractConfig,
                 shard: int, method: str, params: dict, on_batch=None) -> tuple[list[dict], ShardStats]:
    """Decode one shard's rows with retries (SPEC 6.4); returns the records and counts.

    ``on_batch(rows, retry, correct)`` is called after every batch: the source rows it decoded for the first time
    (0 for a retry batch), whether it was a retry, and how many of its rows it answered right."""
    from d3llm.decoding import generate

    n, gen = len(rows), cfg.gen_length
    records: list[dict | None] = [None] * n
    pending = list(range(n))
    stats = ShardStats(rows=n)
    for attempt in range(cfg.attempts):
        temperature = round(attempt * TEMPERATURE_STEP, 6)
        for b, start in enumerate(range(0, len(pending), cfg.batch_size)):
            chunk = pending[start:start + cfg.batch_size]
            result = generate(teacher, [prompts[i] for i in chunk], method, temperature=temperature,
                              seed=seed_of("extract", cfg.seed, shard, attempt, b), **params)
            steps = result.commit_step.numpy()
            if (steps < 0).any() or (steps >= gen).any():
                raise TrajectoryError(f"the teacher's decode left positions uncommitted (commit steps outside "
                                      f"[0, {gen})); expected one token per forward over {gen} positions")
            generated = result.generated.tolist()
            for r, i in enumerate(chunk):
                text = tokenizer.decode(result.tokens[r], skip_special_tokens=True)
                row = rows[i]
                records[i] = {"idx": row.idx, "question": row.question, "prompt_ids": prompts[i],
                              "output_ids": generated[r], "order": steps[r].tolist(),
                              "is_correct": answer_matches(text, row.gold), "attempt": attempt,
                              "temperature": temperature, "generated_text": text, "gold": row.gold}
            stats.decodes += len(chunk)
            if on_batch is not None:  # a retried row was wrong before: every right answer here is newly right
                on_batch(len(chunk) if attempt == 0 else 0, attempt > 0,
                         sum(bool(records[i]["is_correct"]) for i in chunk))
        pending = [i for i in pending if not records[i]["is_correct"]]
        if not pending or attempt == cfg.attempts - 1:
            break
        stats.retried += len(pending)
    stats.correct = sum(bool(r["is_correct"]) for r in records)
    return records, stats


# ------------------------------------------------------------------------------------------------------------------
# the sharded, resumable run
# ------------------------------------------------------------------------------------------------------------------

class _Bar:
    """Rows/s, the teacher's accuracy so far and the retries (main rank, rich)."""

    def __init__(self, total: int, done: int, enabled: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.console = Console(stderr=True)
        use = enabled if enabled is not None else self.console.is_terminal
        self.bar = None
        self.rows = self.correct = self.retries = 0
        self.t0 = time.perf_counter()
        if use:
            self.bar = Progress(TextColumn("[bold]trajectories"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=self.console)
            self.task = self.bar.add_task("extract", total=total, completed=done, info="")
            self.bar.start()

    def advance(self, rows: int, retry: bool, correct: int) -> None:
        """After a batch: ``rows`` new source rows, ``retry`` whether it retried wrong rows, ``correct`` its rows
        answered right (the accuracy shown includes them at once)."""
        self.rows += rows
        self.retries += int(retry)
        self.correct += correct
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            acc = 100.0 * self.correct / self.rows if self.rows else 0.0
            self.bar.update(self.task, advance=rows, info=f"{rate:,.1f} rows/s  teacher {acc:.1f}% correct  "
                                                          f"{self.retries} retry batches")

    def log(self, text: str) -> None:
        (self.bar.console if self.bar is not None else self.console).print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


PLAN_IGNORED = ("teacher_path",)  # the folder may move: its hashes identify the teacher


def _plan_key(plan: dict) -> str:
    return store.canonical_key({k: v for k, v in plan.items() if k not in PLAN_IGNORED})


def _check_plan(out: Path, plan: dict) -> None:
    file = out / store.PLAN
    old = store.read_json(file, "extraction plan") if file.is_file() else None
    check_plan(old, plan, where=str(out), what="trajectories", ignore=PLAN_IGNORED,
               hint="rerun with the same options to continue it, or choose another --out")


def _shard_done(out: Path, shard: int, key: str) -> dict | None:
    """The shard's checksum record if its file exists and matches it (and this run's key), else None."""
    parquet, record = store.shard_paths(out, shard)
    if not (parquet.is_file() and record.is_file()):
        return None
    try:
        entry = store.read_json(record, "shard record")
        if entry.get("key") != key:
            return None
        store.verify_shard(out, entry)
    except (TrajectoryError, KeyError):
        return None
    return entry


def extract(cfg: ExtractConfig) -> Path:
    """Run (or continue) an extraction; returns the trajectory folder (on every rank)."""
    cfg.validate()
    info = distm.setup(cfg.device)
    try:
        return _extract(cfg, info)
    finally:
        distm.teardown(info)


def _extract(cfg: ExtractConfig, info: distm.DistInfo) -> Path:
    from d3llm import __version__
    from d3llm.models.checkpoint import load_model
    from d3llm.models.tokenizer import load_tokenizer

    distm.set_threads(info, cfg.threads)
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder")
    for name in (store.PLAN, store.MANIFEST):  # before any decoding: a device or FIFO there is refused
        check_output_file(out / name)
    teacher_dir = Path(cfg.teacher).expanduser()
    teacher = load_model(teacher_dir, device=info.device, dtype=cfg.dtype)
    tokenizer = load_tokenizer(teacher_dir)
    rows, source = load_source(cfg.data, cfg.limit, cfg.data_seed)
    method, params = teacher_decoder(teacher.family, cfg)
    plan = {"format": store.FORMAT, "version": store.FORMAT_VERSION, "teacher_path": str(teacher_dir.resolve()),
            **store.model_hashes(teacher_dir), "family": teacher.family, "mask_id": teacher.config.mask_token_id,
            "eos_id": teacher.config.eos_token_id, "decoder": {"method": method, **params},
            "chat_template": cfg.chat_template, "source": source, "rows": len(rows), "shard_size": cfg.shard_size,
            "shards": math.ceil(len(rows) / cfg.shard_size), "attempts": cfg.attempts,
            "temperatures": [round(a * TEMPERATURE_STEP, 6) for a in range(cfg.attempts)], "seed": cfg.seed}
    key = _plan_key(plan)
    _check_plan(out, plan)
    if info.is_main:
        make_folder(out)
        if not (out / store.PLAN).is_file():
            store.write_json(out / store.PLAN, plan)
    distm.barrier(info)

    n_shards = plan["shards"]
    mine = list(range(info.rank, n_shards, info.world_size))
    done = {s: _shard_done(out, s, key) for s in mine}
    bar = _Bar(sum(min(cfg.shard_size, len(rows) - s * cfg.shard_size) for s in mine),
               sum(done[s]["rows"] for s in mine if done[s]), cfg.progress if info.is_main else False)
    skipped = sum(1 for s in mine if done[s])
    if skipped and info.is_main:
        bar.log(f"{skipped} finished shard(s) verified and kept")
    t0 = time.perf_counter()
    try:
        for shard in mine:
            if done[shard]:
                continue
            part = rows[shard * cfg.shard_size:(shard + 1) * cfg.shard_size]
            prompts = [prompt_of(r, tokenizer, cfg.chat_template) for r in part]
            records, stats = decode_shard(teacher, tokenizer, part, prompts, cfg, shard, method, params,
                                          on_batch=bar.advance)
            parquet, record = store.shard_paths(out, shard)
            entry = store.write_shard(parquet, records)
            store.write_json(record, {**entry, "key": key, "shard": shard, "first_idx": part[0].idx,
                                      "stats": asdict(stats), "wall_s": round(time.perf_counter() - t0, 3)})
    finally:
        bar.close()
    distm.barrier(info)

    if info.is_main:
        entries, stats = [], ShardStats()
        for shard in range(n_shards):
            entry = _shard_done(out, shard, key)
            if entry is None:
                raise TrajectoryError(f"shard {shard} of {out} is missing or does not match its record after the "
                                      f"run; rerun the same command")
            entries.append({k: entry[k] for k in ("file", "rows", "size", "sha256")})
            for k, v in entry["stats"].items():
                setattr(stats, k, getattr(stats, k) + v)
        manifest = {**plan, "stats": asdict(stats), "shards": entries, "created_by": f"d3llm {__version__}"}
        store.write_json(out / store.MANIFEST, manifest)
        elapsed = time.perf_counter() - t0
        bar.log(f"wrote {len(rows)} trajectories in {n_shards} shard(s) to {out} ({elapsed:.1f} s this run; teacher "
                f"{100.0 * stats.correct / max(stats.rows, 1):.1f}% correct, {stats.retried} retried)")
    distm.barrier(info)
    return out
