"""The two curricula of d3LLM distillation (SPEC 7.3).

* **Progressive noise**: the lower bound of the mask ratio rises linearly with the optimizer step,
  ``lower = min_r + min(step / max_steps, 1) * (max_r - min_r)``; each micro-batch then draws
  ``t ~ U(lower, max_r)``. Early steps see easy (lightly masked) blocks, late steps only heavily masked ones.
* **Progressive window**: the block size follows the fractional epoch ``e`` through a list of per-epoch sizes,
  interpolated within an epoch: ``sizes[i] + (e - i) * (sizes[i + 1] - sizes[i])`` truncated to an int, the last
  size from the last listed epoch on (a list shorter than the run is padded with its last value).
"""

from __future__ import annotations

import math

from d3llm.errors import ConfigError


def noise_lower(step: int, max_steps: int, min_ratio: float = 0.0, max_ratio: float = 0.8) -> float:
    """Lower bound of the mask ratio at optimizer step ``step`` of ``max_steps``."""
    return min_ratio + min(step / max_steps, 1.0) * (max_ratio - min_ratio)


def window_size(epoch: float, sizes: list[int] | tuple[int, ...]) -> int:
    """Block size at fractional epoch ``epoch`` for per-epoch ``sizes``."""
    if not sizes:
        raise ConfigError("the progressive window needs at least one block size")
    i = min(int(math.floor(epoch)), len(sizes) - 1)
    if i == len(sizes) - 1:
        return int(sizes[i])
    return int(sizes[i] + (epoch - i) * (sizes[i + 1] - sizes[i]))
