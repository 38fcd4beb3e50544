"""Options of the training loop and of ``d3llm train`` as dataclasses. No torch import here, so that building the
command-line parser (``d3llm --help``) stays fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from d3llm.errors import ConfigError

DEFAULT_WARMUP = 200

#: ``d3llm train --objective``: masked-diffusion SFT of a bidirectional model, or next-token SFT of a causal one
SFT_OBJECTIVES = {"diffusion": "masked-diffusion SFT (LLaDA guidelines) of a bidirectional model (llada-*, dream-*)",
                  "causal": "next-token SFT of a causal model (llama-*): the autoregressive baseline"}


@dataclass
class LoopConfig:
    """Options of the training loop itself, shared by every objective (see ``d3llm train --help``)."""

    out: str
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int | None = None  # None: DEFAULT_WARMUP, at most a tenth of the run
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 500
    keep: int = 2
    eval_every: int = 500
    log_every: int = 50
    resume: bool = False
    allow_schedule_change: bool = False  # --resume with other schedule values (see schedule())
    device: str | None = None
    threads: int | None = None
    bf16: bool = False
    progress: bool | None = None

    def validate(self) -> None:
        for name in ("steps", "batch_size", "save_every", "eval_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.warmup_steps is not None:
            if self.warmup_steps < 0:
                raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
            if self.warmup_steps > self.steps:
                raise ConfigError(f"--warmup-steps {self.warmup_steps} is more than --steps {self.steps}: the run would "
                                  f"end before the learning rate reaches --lr; lower --warmup-steps (or omit it: "
                                  f"the default warm-up is {DEFAULT_WARMUP} steps, at most a tenth of the run)")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip must be >= 0 (0 disables it), got {self.grad_clip}")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"--threads must be positive, got {self.threads}")

    @property
    def warmup(self) -> int:
        """Warm-up steps in effect: ``warmup_steps``, or by default :data:`DEFAULT_WARMUP` capped at a tenth of
        ``steps`` (so a short run still decays its learning rate)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(DEFAULT_WARMUP, self.steps // 10)

    def schedule(self) -> dict[str, Any]:
        """The values that shape the learning-rate schedule and the optimizer, by the flag that sets them (the
        betas have no flag): a resumed run must keep them unless ``allow_schedule_change`` is set. The warm-up is
        the one in effect (:attr:`warmup`), so an explicit ``--warmup-steps`` equal to the default is no change."""
        return {"--steps": self.steps, "--lr": self.lr, "--min-lr-ratio": self.min_lr_ratio,
                "--warmup-steps": self.warmup, "--weight-decay": self.weight_decay, "--grad-clip": self.grad_clip,
                "beta1": self.beta1, "beta2": self.beta2}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def schedule_changes(saved: dict[str, Any], cfg: LoopConfig) -> list[str]:
    """``"--steps 100 (now 200)"`` for every :meth:`LoopConfig.schedule` value of ``cfg`` that differs from the run
    whose options are ``saved`` (a checkpoint's ``config``)."""
    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    before = LoopConfig(**{"out": "", **{k: v for k, v in saved.items() if k in fields}}).schedule()
    now = cfg.schedule()
    return [f"{name} {before[name]!r} (now {now[name]!r})" for name in now if before[name] != now[name]]


@dataclass
class TrainConfig(LoopConfig):
    """Options of ``d3llm train`` (see ``d3llm train --help`` for each): the loop's, plus objective, data, model and
    noise."""

    objective: str = "diffusion"
    data: str = "arith"
    eval_data: str | None = None
    model: str = "llada-small"
    set: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    eps: float = 1e-3
    response_length: int | None = None  # a fixed canvas (when canvas_lengths is not given); see canvas_mix()
    canvas_lengths: str | None = None   # a mix (d3llm.training.mixes); None: DEFAULT_CANVAS_MIX
    turns: str | None = None            # built-in task: mix of questions per conversation; None: DEFAULT_TURN_MIX
    train_size: int | None = None
    data_seed: int = 0
    eval_size: int = 200
    eval_decode: str | None = None
    eval_decode_size: int = 100

    def validate(self) -> None:
        super().validate()
        for name in ("eval_size", "eval_decode_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.response_length is not None and self.response_length <= 0:
            raise ConfigError(f"--response-length must be positive, got {self.response_length}")
        self.canvas_mix()
        self.turn_mix()
        if not 0 < self.eps < 1:
            raise ConfigError(f"--eps must lie in (0, 1), got {self.eps}")
        if self.objective not in SFT_OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r} is not one of {', '.join(SFT_OBJECTIVES)}")

    def canvas_mix(self):
        """The canvas lengths of training rows (:class:`~d3llm.training.mixes.Mix`): ``--canvas-lengths``, else the
        fixed ``--response-length``, else :data:`~d3llm.training.mixes.DEFAULT_CANVAS_MIX`."""
        from d3llm.training.mixes import DEFAULT_CANVAS_MIX, Mix

        if self.canvas_lengths is not None:
            return Mix.parse(self.canvas_lengths, "--canvas-lengths")
        if self.response_length is not None:
            return Mix.parse(str(self.response_length), "--response-length")
        return Mix.parse(DEFAULT_CANVAS_MIX, "--canvas-lengths")

    def turn_mix(self):
        """Questions per training conversation (built-in task): ``--turns``, else the default mix."""
        from d3llm.tasks.arith import MAX_TURNS
        from d3llm.training.mixes import DEFAULT_TURN_MIX, Mix

        return Mix.parse(self.turns if self.turns is not None else DEFAULT_TURN_MIX, "--turns", 1, MAX_TURNS)

    @property
    def decode_length(self) -> int:
        """New tokens of the model's default decoding (``generation_config.json``) and of the in-run evaluation:
        ``--response-length`` when given, else the smallest canvas of the mix of at least 48."""
        if self.response_length is not None:
            return self.response_length
        values = self.canvas_mix().values
        return next((v for v in values if v >= 48), values[-1])
