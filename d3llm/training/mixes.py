"""Discrete mixes drawn once per optimizer step: the canvas lengths and the conversation turns of a training batch.

A mix is written ``"32:0.1,48:0.2,256:0.15"`` (value:weight pairs; the weights are normalised) or a single value
``"48"``. Training draws one value per step from a generator seeded by ``(seed, step)``: a batch is one bucket (all
its rows share the canvas length and the number of turns, so no row pays for a longer neighbour), and over a run
every example's value follows the mix. Why the default canvas mix spans 32 to 256 new tokens: LLaDA's SFT pads each
response with end-of-text to the sequence length and trains on the padding, so one model decodes on any canvas and
fills the tail with EOS; a model trained on one response length only works at that length.
"""

from __future__ import annotations

from dataclasses import dataclass

from d3llm.errors import ConfigError

#: ``d3llm train --canvas-lengths`` default: new tokens per training row (mean 112)
DEFAULT_CANVAS_MIX = "32:0.1,48:0.2,64:0.2,96:0.1,128:0.15,192:0.1,256:0.15"
#: ``d3llm train --turns`` default for the built-in task: questions per conversation (70% single questions)
DEFAULT_TURN_MIX = "1:0.7,2:0.15,3:0.1,4:0.05"


@dataclass(frozen=True)
class Mix:
    """Values (ascending) and their probabilities."""

    values: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, flag: str, low: int = 1, high: int | None = None) -> "Mix":
        """Parse ``"A:w,B:w"`` or ``"A"``; errors name ``flag`` and the item."""
        pairs: dict[int, float] = {}
        expected = f"expected VALUE or VALUE:WEIGHT pairs separated by commas, e.g. {flag} 48 or {flag} 32:1,64:1"
        for item in str(text).split(","):
            value, sep, weight = item.strip().partition(":")
            try:
                v, w = int(value), float(weight) if sep else 1.0
            except ValueError:
                raise ConfigError(f"{flag} {text!r}: {item!r} is not a value; {expected}") from None
            if v < low or (high is not None and v > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ConfigError(f"{flag} {text!r}: {v} must be {bound}")
            if not (w > 0 and w < float("inf")):
                raise ConfigError(f"{flag} {text!r}: the weight of {v} must be a positive number, got {weight!r}")
            if v in pairs:
                raise ConfigError(f"{flag} {text!r}: {v} is listed twice")
            pairs[v] = w
        total = sum(pairs.values())
        values = tuple(sorted(pairs))
        return cls(values, tuple(pairs[v] / total for v in values))

    def draw(self, generator) -> int:
        """One value, drawn with ``generator`` (a ``torch.Generator``)."""
        import torch

        if len(self.values) == 1:
            return self.values[0]
        index = int(torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), 1, generator=generator))
        return self.values[index]

    def fit(self, drawn: int, need: int) -> int | None:
        """The smallest value of the mix that is at least ``drawn`` and ``need`` (None when none is)."""
        return next((v for v in self.values if v >= max(drawn, need)), None)

    def mean(self) -> float:
        return sum(v * w for v, w in zip(self.values, self.weights))

    def describe(self) -> str:
        return ", ".join(f"{v}: {100 * w:.0f}%" for v, w in zip(self.values, self.weights))
