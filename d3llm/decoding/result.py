"""What ``d3llm.generate`` returns, and what its per-step callback receives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class GenerationResult:
    """The outcome of decoding a batch.

    Attributes:
        sequences: ``[B, G + N]`` final canvases: left-padded prompts (G = longest prompt) then N generated columns.
        prompt_lengths: ``[B]`` real prompt lengths.
        nfe: ``[B]`` forward passes each row took part in (real forwards; the reference's counter adds one when
            it exits after incrementing, e.g. on early stop).
        commit_step: ``[B, N]`` the step (0-based forward index of that row) after which each generated position
            stopped being masked: the decoding trajectory that distillation records. A position filled by early
            stop gets the step in which the fill happened; -1 marks a position still masked (only when decoding
            was cut off by the step cap).
        positions: ``[B]`` positions each row forwarded, summed over its forwards (a full forward counts the whole
            sequence, a cached forward its slice): the model compute behind its tokens.
        tokens: per row, the generated ids up to (excluding) the first EOS.
        wall_time: seconds for the whole call; model_time: seconds inside model forwards.
        method, params: the decoder and its resolved parameters.
    """

    sequences: torch.Tensor
    prompt_lengths: torch.Tensor
    nfe: torch.Tensor
    commit_step: torch.Tensor
    tokens: list[list[int]]
    wall_time: float
    model_time: float
    method: str
    params: dict = field(default_factory=dict)
    positions: torch.Tensor | None = None

    @property
    def gen_start(self) -> int:
        return self.sequences.shape[1] - self.commit_step.shape[1]

    @property
    def generated(self) -> torch.Tensor:
        """``[B, N]`` the generated columns of the canvas (EOS padding included)."""
        return self.sequences[:, self.gen_start:]

    @property
    def num_tokens(self) -> torch.Tensor:
        """``[B]`` generated tokens before the first EOS (what TPF and tokens/s count)."""
        return torch.tensor([len(t) for t in self.tokens], dtype=torch.long)

    @property
    def tokens_per_forward(self) -> float:
        """TPF of the batch: generated tokens (before EOS) / forward passes."""
        total = int(self.nfe.sum())
        return float(self.num_tokens.sum()) / total if total else 0.0

    @property
    def positions_per_token(self) -> float:
        """Positions forwarded per generated token (before EOS) of the batch: what a token costs in model compute
        (TPF counts forwards, this counts what they process)."""
        tokens = int(self.num_tokens.sum())
        return float(self.positions.sum()) / tokens if tokens and self.positions is not None else 0.0

    def texts(self, tokenizer, skip_special_tokens: bool = True) -> list[str]:
        """The generated text of every row (``tokens``, cut before the first end-of-text), decoded."""
        return [tokenizer.decode(t, skip_special_tokens=skip_special_tokens) for t in self.tokens]

    @property
    def tokens_per_second(self) -> float:
        return float(self.num_tokens.sum()) / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def loop_time(self) -> float:
        """Seconds spent outside model forwards (the decoder's own cost)."""
        return max(self.wall_time - self.model_time, 0.0)


@dataclass
class StepEvent:
    """Handed to the ``callback`` of ``generate`` after every decoding step.

    Attributes:
        step: 0-based step index (every active row forwarded once in it).
        rows: ``[n]`` indices (in the caller's batch) of the rows decoded in this step.
        canvas: ``[n, G + N]`` numpy array, their canvases after the step (a view: copy it to keep it).
        committed: ``[n, G + N]`` bool numpy array, the positions filled in this step.
        gen_start: G, the first generated column.
        block_size: the decoder's block size (None for single-block decoders).
    """

    step: int
    rows: list[int]
    canvas: np.ndarray
    committed: np.ndarray
    gen_start: int
    block_size: int | None = None
