"""What a training run optimises, as seen by the one training loop (:mod:`d3llm.training.trainer`).

The loop owns everything objectives share: processes and devices (``torchrun`` data parallelism), the optimizer and
its schedule, gradient clipping, atomic checksummed checkpoints and exact ``--resume``, the progress bar, the log
and the final model folder. An :class:`Objective` owns what differs: where the model, the tokenizer and the data
come from, what one optimizer step's batch is, the loss, and the held-out evaluation. Objectives today:

* :class:`d3llm.training.sft.MaskedDiffusionObjective`: masked-diffusion SFT (``d3llm train``);
* :class:`d3llm.training.causal.CausalLMObjective`: next-token SFT of a causal model, the autoregressive baseline
  (``d3llm train --objective causal``);
* :class:`d3llm.distill.objective.DistillationObjective`: pseudo-trajectory distillation (``d3llm distill``).

Determinism contract (what makes ``--resume`` bit-exact and one process equal to many): :meth:`Objective.batch` of
step ``s`` depends only on ``s``, the rank's slice of the global batch and the options, never on earlier calls or
on global random state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from d3llm.training.config import LoopConfig


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from any parts (``seed_of("noise", seed, step)``): stable across processes and runs."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


@dataclass
class StepLoss:
    """One step's loss on this rank: ``loss`` (scalar, differentiable, the mean over the rank's examples),
    ``tokens`` processed (for tokens/s) and extra ``metrics`` to average into the log (rank-local floats)."""

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class of training objectives (see the module docstring). Subclasses set ``name`` and ``resume_keys`` and
    implement :meth:`setup`, :meth:`batch` and :meth:`loss`; the rest has working defaults."""

    name: str = "objective"
    #: options that fix the data order, the noise and the model: a resumed run must use the same values
    resume_keys: tuple[str, ...] = ()

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        self.model = None              # set by setup(): the module to train (on the CPU)
        self.tokenizer = None
        self.tokenizer_dir: Path | None = None
        self.data_name = ""            # shown in the log line that starts the run

    # -- setup (every rank) -----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the options before any work (raises ConfigError)."""
        self.cfg.validate()

    def setup(self, info, out: Path) -> None:  # pragma: no cover - abstract
        """Load or build the model, tokenizer and data; build the evaluator on the main rank."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- one step --------------------------------------------------------------------------------------------
    def batch(self, step: int, rank: int, world_size: int, device) -> Any:  # pragma: no cover - abstract
        """The rank's share of step ``step``'s global batch, with its noise, on ``device``."""
        raise NotImplementedError

    def loss(self, net, batch: Any) -> StepLoss:  # pragma: no cover - abstract
        """Forward ``net`` (the model, or its DDP wrapper) on ``batch`` (run under the loop's autocast)."""
        raise NotImplementedError

    def epoch(self, examples: int) -> float:
        """Fractional epoch after ``examples`` global examples (for the log)."""
        return 0.0

    # -- evaluation (main rank) ------------------------------------------------------------------------------
    def evaluate(self, model, device) -> dict[str, float] | None:
        """Held-out metrics of ``model`` (None when the objective has no evaluation set)."""
        return None

    # -- checkpoints and the final folder ---------------------------------------------------------------------
    def export_model(self, model):
        """The plain model to write into a model folder (a checkpoint's ``model/`` and the final output)."""
        return model

    def extra_state(self, model) -> dict[str, torch.Tensor] | None:
        """Tensors a checkpoint needs beyond the exported model to resume exactly (e.g. LoRA adapters)."""
        return None

    def restore(self, model, loaded, extra: dict[str, torch.Tensor] | None) -> None:
        """Load a checkpoint into ``model``: ``loaded`` is the checkpoint's model folder, ``extra`` its extra
        state."""
        model.load_state_dict(loaded.state_dict())

    def summary(self) -> dict[str, Any]:
        """Extra fields for ``training.json``."""
        return {}
