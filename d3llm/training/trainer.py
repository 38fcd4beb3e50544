"""The training loop of ``d3llm train`` and ``d3llm distill``: one loop, pluggable objectives.

The loop (this module) owns what every objective shares; an :class:`~d3llm.training.objective.Objective` owns the
model, the data, the batch of a step and the loss (masked-diffusion SFT: :mod:`d3llm.training.sft`; next-token SFT
of a causal model: :mod:`d3llm.training.causal`; pseudo-trajectory distillation: :mod:`d3llm.distill.objective`).

Optimisation: AdamW (no weight decay on norms and other 1-d parameters) over the parameters that require gradients,
linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient clipping. Every ``save_every`` steps an atomic,
checksummed checkpoint is written (see :mod:`d3llm.training.checkpoint`); every ``eval_every`` steps the objective's
held-out evaluation runs on the main rank. At the end the model is written to ``out`` as a model folder
(``config.json``, ``model.safetensors``, tokenizer files, ``training.json``). ``torchrun`` runs the same command as
several data-parallel processes (see :mod:`d3llm.training.distributed`).

``--resume`` continues from the newest checkpoint exactly as the uninterrupted run would have gone on: the same
weights, and the same ``train_log.jsonl`` (the log is rewritten from the checkpoint's history, and the checkpoint
keeps the running averages of the log line in progress), apart from wall-clock fields (``tokens_per_s``,
``elapsed_s``). Options that define the learning-rate schedule and the optimizer (:meth:`LoopConfig.schedule`) must
match the checkpoint's unless ``allow_schedule_change`` is set; options that fix the data order, the noise and the
model (the objective's ``resume_keys``) must always match.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from d3llm.errors import ConfigError
from d3llm.files import append_text, atomic_write_text, check_output_file, make_folder
from d3llm.training import checkpoint as ckpt
from d3llm.training import distributed as distm
from d3llm.training.config import LoopConfig, TrainConfig, schedule_changes
from d3llm.training.causal import CausalLMObjective
from d3llm.training.objective import Objective
from d3llm.training.sft import DataStream, MaskedDiffusionObjective

__all__ = ["DataStream", "LoopConfig", "Objective", "TrainConfig", "lr_at", "train"]

LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "training.json"


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``cfg.warmup`` steps, then cosine decay
    from ``lr`` to ``min_lr_ratio * lr`` at the last step."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(1, cfg.steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ------------------------------------------------------------------------------------------------------------------
# progress display
# ------------------------------------------------------------------------------------------------------------------

class Progress:
    """A rich progress bar with loss and tokens/s on a terminal; plain log lines otherwise (rank 0 only)."""

    def __init__(self, cfg: LoopConfig, total: int, start: int, enabled: bool, title: str = "train"):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        use_bar = cfg.progress if cfg.progress is not None else self.console.is_terminal
        self.bar = None
        if enabled and use_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=self.console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)

    def log(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------------------------------------------
# the training loop
# ------------------------------------------------------------------------------------------------------------------

def train(cfg: LoopConfig, objective: Objective | None = None) -> Path:
    """Run training as configured; returns the output model folder (on every rank). ``objective`` defaults to the
    SFT objective ``cfg.objective`` names (a :class:`TrainConfig`: masked-diffusion, or causal next-token)."""
    if objective is None:
        cfg.validate()
        objective = (CausalLMObjective if cfg.objective == "causal" else MaskedDiffusionObjective)(cfg)
    objective.validate()
    info = distm.setup(cfg.device)
    try:
        return _train(cfg, objective, info)
    finally:
        distm.teardown(info)


def _train(cfg: LoopConfig, objective: Objective, info: distm.DistInfo) -> Path:
    from d3llm.models.checkpoint import MODEL_FILES, save_model

    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder")
    for name in (LOG_NAME, SUMMARY_NAME, *MODEL_FILES):  # before any work: a device or FIFO there is refused
        check_output_file(out / name)
    distm.set_threads(info, cfg.threads)
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    local_bs = cfg.batch_size // info.world_size

    # -- resume bookkeeping (every rank checks the same files, so every rank fails the same way) -----------------
    existing = ckpt.list_checkpoints(out)
    start_step, resume_from, history = 0, None, []
    if existing and not cfg.resume:
        raise ConfigError(f"{ckpt.checkpoint_dir(out)} already holds checkpoints (latest: step {existing[-1].step}); "
                          f"pass --resume to continue that run, or choose another --out")
    if cfg.resume and existing:
        resume_from = existing[-1]
        ckpt.verify_checkpoint(resume_from.path)
    make_folder(out)
    if info.is_main:
        ckpt.remove_partial(out)

    # -- data, tokenizer, model (the objective's) ------------------------------------------------------------------
    objective.setup(info, out)
    model = objective.model.to(info.device).train()
    params = objective.trainable_parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    window: dict[str, float] = {}  # sums of the log line in progress, and the steps they cover
    window_steps = 0
    schedule_note = ""
    if resume_from is not None:
        loaded, opt_state, state = ckpt.load_checkpoint(resume_from.path, device=info.device)
        saved_cfg = state.get("config", {})
        diffs = [f"--{k.replace('_', '-')} {saved_cfg.get(k)!r} (now {getattr(cfg, k)!r})"
                 for k in objective.resume_keys if k in saved_cfg and saved_cfg[k] != getattr(cfg, k)]
        if diffs:
            raise ConfigError(f"cannot resume from {resume_from.path}: it was trained with " + ", ".join(diffs)
                              + "; pass the same options to continue that run")
        changed = schedule_changes(saved_cfg, cfg)
        if changed and not cfg.allow_schedule_change:
            raise ConfigError(f"cannot resume from {resume_from.path}: it was trained with " + ", ".join(changed)
                              + ", which shape the learning-rate schedule and the optimizer; pass the same values "
                                "to continue that run, or --allow-schedule-change to go on with the new ones")
        if changed:
            schedule_note = " with a changed schedule: " + ", ".join(changed)
        objective.restore(model, loaded, ckpt.load_extra(resume_from.path, device=info.device))
        optimizer.load_state_dict(opt_state)
        for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):  # the state holds the old ones
            group["weight_decay"], group["betas"] = decay, (cfg.beta1, cfg.beta2)
        start_step, history = int(state["step"]), list(state.get("history", []))
        window = {k: float(v) for k, v in state.get("log_window", {}).get("sums", {}).items()}
        window_steps = int(state.get("log_window", {}).get("steps", 0))

    net = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    progress = Progress(cfg, cfg.steps, start_step, enabled=info.is_main, title=objective.name)
    if resume_from is not None:
        progress.log(f"resuming from {resume_from.path} (step {start_step}){schedule_note}")
    elif cfg.resume:
        progress.log(f"no checkpoint in {ckpt.checkpoint_dir(out)}; starting from step 0")
    base = objective.export_model(model)
    progress.log(f"training {base.config.describe() if hasattr(base.config, 'describe') else type(base).__name__} "
                 f"({base.num_parameters():,} parameters) on {objective.data_name} with {info.world_size} "
                 f"process(es), global batch {cfg.batch_size}, {cfg.steps} steps")
    log_file = out / LOG_NAME
    if info.is_main:  # the log of the steps done so far: lines of a killed run past the checkpoint are dropped
        atomic_write_text(log_file, "".join(json.dumps(entry) + "\n" for entry in history))

    def record(entry: dict) -> None:
        history.append(entry)
        if info.is_main:
            append_text(log_file, json.dumps(entry) + "\n")

    def state_dict() -> dict:
        return {"config": cfg.to_dict(), "world_size": info.world_size, "history": history,
                "log_window": {"sums": window, "steps": window_steps}}

    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    t_start = time.perf_counter()
    window_tokens, window_t0 = 0.0, time.perf_counter()  # tokens/s: this process's share of the window
    step = start_step
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = objective.batch(step, info.rank, info.world_size, info.device)
            with autocast:
                result = objective.loss(net, batch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            else:
                grad_norm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
            if not math.isfinite(grad_norm):
                raise ConfigError(f"step {step + 1}: the gradient norm is {grad_norm}; lower --lr or check the data")
            optimizer.step()

            names = sorted(result.metrics)
            sums = distm.all_reduce_sum(info, [float(result.loss.detach()) * local_bs, result.tokens]
                                        + [result.metrics[k] * local_bs for k in names])
            for key, value in zip(["loss", *names], [sums[0], *sums[2:]]):
                window[key] = window.get(key, 0.0) + value / cfg.batch_size
            window_tokens += sums[1]
            window_steps += 1
            done = step + 1
            elapsed = time.perf_counter() - window_t0
            tps = window_tokens / elapsed if elapsed > 0 else 0.0
            progress.update(done, f"loss {window['loss'] / window_steps:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s")
            if done % cfg.log_every == 0 or done == cfg.steps:
                means = {k: v / window_steps for k, v in window.items()}
                entry = {"step": done, "loss": means.pop("loss"), "lr": lr, "grad_norm": grad_norm,
                         "tokens_per_s": tps, "epoch": objective.epoch(done * cfg.batch_size),
                         "elapsed_s": time.perf_counter() - t_start, **means}
                record(entry)
                if progress.bar is None:
                    progress.log(f"step {done}/{cfg.steps}  loss {entry['loss']:.4f}  lr {lr:.2e}  "
                                 f"{tps:,.0f} tok/s")
                window, window_tokens, window_steps, window_t0 = {}, 0.0, 0, time.perf_counter()
            if info.is_main and (done % cfg.eval_every == 0 or done == cfg.steps):
                metrics = objective.evaluate(model, info.device)
                if metrics is not None:
                    ev = {"step": done, **metrics}
                    record(ev)
                    progress.log("eval " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in ev.items()))
            if done % cfg.save_every == 0 or done == cfg.steps:
                if info.is_main:
                    path = ckpt.save_checkpoint(out, done, objective.export_model(model), optimizer, state_dict(),
                                                objective.tokenizer_dir, keep=cfg.keep,
                                                extra=objective.extra_state(model))
                    progress.log(f"saved {path}")
                distm.barrier(info)
    finally:
        progress.close()

    if info.is_main:
        model.eval()
        final = objective.export_model(model)
        save_model(final, out, tokenizer=objective.tokenizer_dir)
        summary = {"objective": objective.name, "config": cfg.to_dict(), "world_size": info.world_size,
                   "steps": cfg.steps, "parameters": final.num_parameters(),
                   "wall_time_s": time.perf_counter() - t_start, "resumed_from_step": start_step,
                   "torch": torch.__version__, **objective.summary(),
                   "final": {k: v for e in history[-3:] for k, v in e.items()}}
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        progress.log(f"wrote the trained model to {out}")
    distm.barrier(info)
    return out
