"""Options of ``d3llm trajectories extract`` and ``d3llm distill`` as dataclasses (no torch import, so that
``d3llm --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from d3llm.errors import ConfigError
from d3llm.training.config import LoopConfig


@dataclass
class ExtractConfig:
    """Options of ``d3llm trajectories extract`` (see its ``--help``)."""

    teacher: str
    data: str
    out: str
    limit: int | None = None
    gen_length: int = 48
    block_size: int = 16
    chat_template: bool = True
    attempts: int = 5
    batch_size: int = 64
    shard_size: int = 512
    seed: int = 0
    data_seed: int = 0
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    progress: bool | None = None

    def validate(self) -> None:
        for name in ("gen_length", "block_size", "attempts", "batch_size", "shard_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.gen_length % self.block_size:
            raise ConfigError(f"--gen-length {self.gen_length} must be a multiple of --block-size {self.block_size}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be positive, got {self.limit}")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"--threads must be positive, got {self.threads}")


@dataclass
class DistillConfig(LoopConfig):
    """Options of ``d3llm distill`` (see ``d3llm distill --help``): the loop's plus SPEC 7's."""

    steps: int = 1000
    lr: float = 5e-4
    save_every: int = 250
    eval_every: int = 250
    log_every: int = 25
    teacher: str = ""
    trajectories: str = ""
    targets: str = "teacher"
    data: str | None = None
    response_length: int | None = None
    window_sizes: list[int] = field(default_factory=lambda: [16, 16, 24, 24, 32, 32])
    min_noise: float = 0.0
    max_noise: float = 0.8
    fixed_noise: float | None = None
    fixed_window: int | None = None
    random_mask: bool = False
    complementary: bool = True
    entropy_weight: float | None = None
    entropy_temperature: float = 0.5
    whole_response: bool = False
    micro_batch_size: int | None = None
    keep_incorrect: bool = False
    lora: bool = False
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "reference"
    eval_data: str | None = None
    eval_size: int = 100
    eval_block_size: int | None = None
    eval_threshold: float = 0.5
    eval_cache_delay: int | None = None
    # filled in by the objective from the files (recorded with the options, checked on --resume)
    teacher_hash: str | None = None
    trajectories_hash: str | None = None

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ConfigError("--teacher is required: the model folder whose trajectories are distilled")
        if not self.trajectories:
            raise ConfigError("--trajectories is required: a folder written by 'd3llm trajectories extract'")
        if self.targets not in ("teacher", "data"):
            raise ConfigError(f"--targets must be 'teacher' (the teacher's own outputs) or 'data' (the source "
                              f"responses), got {self.targets!r}")
        if self.targets == "data" and not self.data:
            raise ConfigError("--targets data needs --data (the source the trajectories were extracted from)")
        if not self.window_sizes or any(int(b) <= 0 for b in self.window_sizes):
            raise ConfigError(f"--window-sizes must be positive block sizes, got {self.window_sizes}")
        if not 0.0 <= self.min_noise <= self.max_noise <= 1.0:
            raise ConfigError(f"need 0 <= --min-noise <= --max-noise <= 1, got {self.min_noise} and {self.max_noise}")
        if self.fixed_noise is not None and not 0.0 <= self.fixed_noise <= 1.0:
            raise ConfigError(f"--fixed-noise must lie in [0, 1], got {self.fixed_noise}")
        if self.fixed_window is not None and self.fixed_window <= 0:
            raise ConfigError(f"--fixed-window must be positive, got {self.fixed_window}")
        if self.micro_batch_size is not None and (self.micro_batch_size <= 0
                                                  or self.batch_size % self.micro_batch_size):
            raise ConfigError(f"--micro-batch-size {self.micro_batch_size} must be positive and divide "
                              f"--batch-size {self.batch_size}")
        if self.lora_targets not in ("reference", "all"):
            raise ConfigError(f"--lora-targets must be 'reference' or 'all', got {self.lora_targets!r}")
        if self.lora and self.lora_r <= 0:
            raise ConfigError(f"--lora-r must be positive, got {self.lora_r}")
        if self.eval_size < 0:
            raise ConfigError(f"--eval-size must be >= 0, got {self.eval_size}")
        if not self.entropy_temperature > 0:
            raise ConfigError(f"--entropy-temperature must be positive, got {self.entropy_temperature}")
