"""``d3llm train``: masked-diffusion supervised fine-tuning (LLaDA guidelines), from scratch or from a model folder.

One optimizer step processes a *global* batch of ``batch_size`` examples: examples ``[s * G, (s + 1) * G)`` of the
data stream at step s (the stream is the built-in task's problem sequence, or a file's rows reshuffled every epoch
with a seeded permutation), and noise drawn from a generator seeded by ``(seed, step)``. Data-parallel ranks take
equal contiguous slices of the global batch and of its noise, so the result does not depend on the number of
processes (up to floating-point reduction order), and ``--resume`` continues with exactly the batches and masks an
uninterrupted run would have used.

Optimisation: AdamW (no weight decay on norms), linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient
clipping. Every ``save_every`` steps an atomic, checksummed checkpoint is written (see
:mod:`d3llm.training.checkpoint`); every ``eval_every`` steps the held-out loss (fixed examples, fixed masks) is
measured, and, with ``eval_decode``, exact-match accuracy of decoded answers. At the end the model is written to
``out`` as a model folder (``config.json``, ``model.safetensors``, tokenizer files, ``training.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from d3llm.errors import ConfigError
from d3llm.models.generation_config import GenerationConfig
from d3llm.training import checkpoint as ckpt
from d3llm.training import distributed as distm
from d3llm.training.collate import Encoder
from d3llm.training.config import RESUME_KEYS, TrainConfig
from d3llm.training.loss import draw_noise, masked_diffusion_loss

__all__ = ["TrainConfig", "train", "lr_at", "DataStream", "RESUME_KEYS"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``cfg.warmup`` steps, then cosine decay
    from ``lr`` to ``min_lr_ratio * lr`` at the last step."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(1, cfg.steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


class DataStream:
    """Global example ``g`` -> dataset item: the built-in task is already i.i.d. (identity order); a file is read in
    a fresh seeded permutation every epoch."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def index(self, g: int) -> int:
        n = len(self.dataset)
        if getattr(self.dataset, "iid", False):
            return g % n
        epoch, pos = divmod(g, n)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(_seed_of("epoch", self.seed, epoch))
            self._perm = (epoch, torch.randperm(n, generator=gen))
        return int(self._perm[1][pos])

    def epoch(self, g: int) -> float:
        return g / len(self.dataset)


# ------------------------------------------------------------------------------------------------------------------
# setup helpers
# ------------------------------------------------------------------------------------------------------------------

def _is_model_folder(spec: str) -> bool:
    return (Path(spec).expanduser() / "config.json").is_file()


def _tokenizer_for(cfg: TrainConfig, info: distm.DistInfo, out: Path):
    """(tokenizer, folder holding its files). Built-in task tokenizer for ``arith`` data from scratch; else the
    ``--tokenizer`` folder, else the ``--model`` folder."""
    from d3llm.models.tokenizer import load_tokenizer

    source = cfg.tokenizer or (cfg.model if _is_model_folder(cfg.model) else None)
    if source is not None:
        return load_tokenizer(source), Path(source)
    if cfg.data.split(":")[0] == "arith":
        from d3llm.tasks.tokenizer import build_tokenizer

        folder = out  # the final model folder: its one copy of the tokenizer files
        if info.is_main:
            tok = build_tokenizer(folder)
        distm.barrier(info)
        if not info.is_main:
            tok = load_tokenizer(folder)
        return tok, folder
    raise ConfigError(f"training from the named config {cfg.model!r} on {cfg.data!r} needs a tokenizer: pass "
                      f"--tokenizer FOLDER (or --model a model folder that has one)")


def _build_model(cfg: TrainConfig, tokenizer):
    from d3llm.models.checkpoint import build_model, load_model
    from d3llm.models.configs import NAMED_CONFIGS

    if _is_model_folder(cfg.model):
        model = load_model(cfg.model, device="cpu")
        if cfg.set:
            raise ConfigError("--set changes the architecture of a new model; it cannot apply to a loaded --model "
                              "folder")
        return model
    if cfg.model not in NAMED_CONFIGS:
        raise ConfigError(f"--model {cfg.model!r} is neither a model folder (no config.json there) nor a named "
                          f"config ({', '.join(sorted(NAMED_CONFIGS))})")
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ConfigError("the tokenizer has no mask_token; a masked-diffusion model needs one (e.g. <|mdm_mask|>)")
    ids = dict(vocab_size=len(tokenizer), mask_token_id=mask_id, eos_token_id=tokenizer.eos_token_id)
    family = NAMED_CONFIGS[cfg.model]["family"]
    ids["pad_token_id" if family == "llada" else "bos_token_id"] = tokenizer.eos_token_id
    overrides = {**ids, **cfg.set}
    return build_model(cfg.model, seed=cfg.seed, **overrides)


def _check_lengths(cfg: TrainConfig, encoder: Encoder, dataset, model) -> None:
    """Fail at start, not at step 3000: every example of a file must fit; the built-in task has a known bound."""
    from d3llm.tasks.arith import MAX_ANSWER_TOKENS

    max_len = model.config.max_length
    if getattr(dataset, "iid", False):
        need = MAX_ANSWER_TOKENS + (1 if encoder.eot_id is not None else 0)
        if cfg.response_length < need:
            raise ConfigError(f"--response-length {cfg.response_length} is too short for the built-in task: its "
                              f"answers take up to {need} tokens with the end-of-turn token")
        sample = [encoder.encode_example(dataset[i]) for i in range(min(len(dataset), 256))]
    else:
        sample = [encoder.encode_example(dataset[i]) for i in range(len(dataset))]
    longest = max(len(e.prompt) for e in sample) + cfg.response_length
    if longest > max_len:
        raise ConfigError(f"sequences of {longest} tokens (prompt + --response-length {cfg.response_length}) exceed "
                          f"the model's max_sequence_length {max_len}")


# ------------------------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------------------------

class Evaluator:
    """Held-out masked-diffusion loss on fixed examples with fixed masks (comparable across steps and runs)."""

    def __init__(self, cfg: TrainConfig, encoder: Encoder, dataset, mask_id: int):
        n = min(cfg.eval_size, len(dataset))
        self.examples = [dataset[i] for i in range(n)]
        self.encoded = [encoder.encode_example(e) for e in self.examples]
        self.encoder, self.mask_id, self.cfg = encoder, mask_id, cfg
        gen = torch.Generator().manual_seed(_seed_of("eval", 12345))
        self.t, self.u = draw_noise(n, cfg.response_length, gen)

    @torch.no_grad()
    def loss(self, model, device) -> float:
        was_training = model.training
        model.eval()
        total, bs = 0.0, self.cfg.batch_size
        for i in range(0, len(self.encoded), bs):
            batch = self.encoder.collate(self.encoded[i:i + bs]).to(device)
            out = masked_diffusion_loss(model, batch, self.mask_id, self.t[i:i + bs], self.u[i:i + bs], self.cfg.eps)
            total += float(out.loss) * batch.input_ids.shape[0]
        model.train(was_training)
        return total / len(self.encoded)

    @torch.no_grad()
    def accuracy(self, model, tokenizer, method: str) -> dict[str, float]:
        """Exact match and TPF of answers decoded with ``d3llm.decoding.generate(method=...)`` on the first
        ``eval_decode_size`` examples (``vanilla``: one token per forward, blocks of 32 when they divide the
        response length)."""
        from d3llm.decoding import generate
        from d3llm.tasks.scoring import score

        was_training = model.training
        model.eval()
        n = min(self.cfg.eval_decode_size, len(self.examples))
        length = self.cfg.response_length
        params = {"max_new_tokens": length, "block_size": 32 if length % 32 == 0 else length}
        if method == "vanilla":
            params["steps"] = length
        result = generate(model, [e.prompt for e in self.encoded[:n]], method, eos_token_id=tokenizer.eos_token_id,
                          **params)
        texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.tokens]
        sc = score(texts, [e.gold if e.gold is not None else e.answer for e in self.examples[:n]])
        model.train(was_training)
        return {"exact_match": sc.strict, "flexible_match": sc.flexible, "tpf": result.tokens_per_forward}


# ------------------------------------------------------------------------------------------------------------------
# progress display
# ------------------------------------------------------------------------------------------------------------------

class Progress:
    """A rich progress bar with loss and tokens/s on a terminal; plain log lines otherwise (rank 0 only)."""

    def __init__(self, cfg: TrainConfig, total: int, start: int, enabled: bool):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        use_bar = cfg.progress if cfg.progress is not None else self.console.is_terminal
        self.bar = None
        if enabled and use_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
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

def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the output model folder (on every rank)."""
    from d3llm.tasks.data import load_dataset

    cfg.validate()
    info = distm.setup(cfg.device)
    try:
        return _train(cfg, info, load_dataset)
    finally:
        distm.teardown(info)


def _train(cfg: TrainConfig, info: distm.DistInfo, load_dataset) -> Path:
    from d3llm.models.checkpoint import atomic_write_text, save_model

    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif info.device.type == "cpu" and info.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
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
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        ckpt.remove_partial(out)

    # -- data, tokenizer, model ------------------------------------------------------------------------------------
    dataset = load_dataset(cfg.data, "train", cfg.train_size, cfg.data_seed)
    tokenizer, tok_dir = _tokenizer_for(cfg, info, out)
    encoder = Encoder(tokenizer, cfg.response_length)
    model = _build_model(cfg, tokenizer)
    mask_id = model.config.mask_token_id
    if mask_id is None:
        raise ConfigError(f"model {cfg.model!r} has no mask_token_id in its config.json")
    if tokenizer.eos_token_id != model.config.eos_token_id:
        raise ConfigError(f"the tokenizer's eos_token_id {tokenizer.eos_token_id} differs from the model's "
                          f"eos_token_id {model.config.eos_token_id}")
    _check_lengths(cfg, encoder, dataset, model)
    model.generation_config = GenerationConfig.for_trained_model(
        cfg.response_length, model.config.eos_token_id, model.config.pad_token_id, base=model.generation_config)
    eval_spec = cfg.eval_data or ("arith:test" if cfg.data.split(":")[0] == "arith" else None)
    evaluator = None
    if eval_spec is not None and info.is_main:
        evaluator = Evaluator(cfg, encoder, load_dataset(eval_spec, "test", None, cfg.data_seed,
                                                                 scored=cfg.eval_decode is not None), mask_id)

    model = model.to(info.device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if resume_from is not None:
        loaded, opt_state, state = ckpt.load_checkpoint(resume_from.path, device=info.device)
        saved_cfg = state.get("config", {})
        diffs = [f"--{k.replace('_', '-')} {saved_cfg.get(k)!r} (now {getattr(cfg, k)!r})" for k in RESUME_KEYS
                 if k in saved_cfg and saved_cfg[k] != getattr(cfg, k)]
        if diffs:
            raise ConfigError(f"cannot resume from {resume_from.path}: it was trained with " + ", ".join(diffs)
                              + "; pass the same options to continue that run")
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(opt_state)
        start_step, history = int(state["step"]), list(state.get("history", []))
    stream = DataStream(dataset, cfg.data_seed)

    net = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    progress = Progress(cfg, cfg.steps, start_step, enabled=info.is_main)
    if resume_from is not None:
        progress.log(f"resuming from {resume_from.path} (step {start_step})")
    elif cfg.resume:
        progress.log(f"no checkpoint in {ckpt.checkpoint_dir(out)}; starting from step 0")
    progress.log(f"training {model.config.describe() if hasattr(model.config, 'describe') else cfg.model} "
                 f"({model.num_parameters():,} parameters) on {dataset.name} with {info.world_size} process(es), "
                 f"global batch {cfg.batch_size}, {cfg.steps} steps")
    log_file = out / "train_log.jsonl"

    def record(entry: dict) -> None:
        history.append(entry)
        if info.is_main:
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def state_dict() -> dict:
        return {"config": cfg.to_dict(), "world_size": info.world_size, "history": history}

    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    t_start = time.perf_counter()
    window_tokens, window_loss, window_steps, window_t0 = 0.0, 0.0, 0, time.perf_counter()
    step = start_step
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            first = step * cfg.batch_size + info.rank * local_bs
            items = [encoder.encode_example(dataset[stream.index(g)]) for g in range(first, first + local_bs)]
            batch = encoder.collate(items).to(info.device)
            gen = torch.Generator().manual_seed(_seed_of("noise", cfg.seed, step))
            t, u = draw_noise(cfg.batch_size, cfg.response_length, gen)
            rows = slice(info.rank * local_bs, (info.rank + 1) * local_bs)
            with autocast:
                result = masked_diffusion_loss(net, batch, mask_id, t[rows], u[rows], cfg.eps)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            else:
                grad_norm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters()
                                                 if p.grad is not None)))
            if not math.isfinite(grad_norm):
                raise ConfigError(f"step {step + 1}: the gradient norm is {grad_norm}; lower --lr or check the data")
            optimizer.step()

            loss_sum, tokens = distm.all_reduce_sum(info, [float(result.loss.detach()) * local_bs, batch.num_tokens()])
            window_loss += loss_sum / cfg.batch_size
            window_tokens += tokens
            window_steps += 1
            done = step + 1
            elapsed = time.perf_counter() - window_t0
            tps = window_tokens / elapsed if elapsed > 0 else 0.0
            progress.update(done, f"loss {window_loss / window_steps:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s")
            if done % cfg.log_every == 0 or done == cfg.steps:
                entry = {"step": done, "loss": window_loss / window_steps, "lr": lr, "grad_norm": grad_norm,
                         "tokens_per_s": tps, "epoch": stream.epoch(done * cfg.batch_size),
                         "elapsed_s": time.perf_counter() - t_start}
                record(entry)
                if progress.bar is None:
                    progress.log(f"step {done}/{cfg.steps}  loss {entry['loss']:.4f}  lr {lr:.2e}  "
                                 f"{tps:,.0f} tok/s")
                window_tokens, window_loss, window_steps, window_t0 = 0.0, 0.0, 0, time.perf_counter()
            if evaluator is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                ev = {"step": done, "eval_loss": evaluator.loss(model, info.device)}
                if cfg.eval_decode:
                    ev.update(evaluator.accuracy(model, tokenizer, cfg.eval_decode))
                record(ev)
                progress.log("eval " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in ev.items()))
            if done % cfg.save_every == 0 or done == cfg.steps:
                if info.is_main:
                    path = ckpt.save_checkpoint(out, done, model, optimizer, state_dict(), tok_dir, keep=cfg.keep)
                    progress.log(f"saved {path}")
                distm.barrier(info)
    finally:
        progress.close()

    if info.is_main:
        model.eval()
        save_model(model, out, tokenizer=tok_dir)
        summary = {"config": cfg.to_dict(), "world_size": info.world_size, "steps": cfg.steps,
                   "parameters": model.num_parameters(), "wall_time_s": time.perf_counter() - t_start,
                   "resumed_from_step": start_step, "torch": torch.__version__,
                   "final": {k: v for e in history[-3:] for k, v in e.items()}}
        atomic_write_text(out / "training.json", json.dumps(summary, indent=2) + "\n")
        progress.log(f"wrote the trained model to {out}")
    distm.barrier(info)
    return out
