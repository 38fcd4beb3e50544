"""Decoder parameters: one dataclass per method, resolved from three layers and validated with messages that say
where each value came from.

Resolution, for every parameter of the method, first match wins:

1. the caller's argument (``d3llm.generate(..., threshold=0.3)``, a CLI flag);
2. the model folder's decoding defaults (``generation_config.json``, see :mod:`d3llm.decoding.defaults`);
3. the method's built-in default (the reference implementation's value).

``steps`` of the block-sequential decoders follows ``max_new_tokens`` (one token per forward) unless one of the
first two layers sets it. A bad value is a :class:`~d3llm.errors.GenerationError` that calls a value the caller never
gave a default, and says which (``steps=128 (built-in default) must be a multiple of ...``).

Every value has a bounded range, so that no request can make a decoder allocate or loop beyond O(canvas): integers
lie in ``[minimum, INT_LIMIT]`` (``steps`` of the step-schedule decoders at most ``max_new_tokens``: a step commits
at least one token), every float is finite, and a temperature is 0 (greedy) or within ``TEMPERATURE_RANGE``. A
sampling ``seed`` is an integer in ``[0, 2**64 - 1]`` (:func:`check_seed`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from d3llm.errors import GenerationError, did_you_mean

GIVEN, FOLDER, BUILTIN, DERIVED = "given", "folder", "builtin", "derived"

INT_LIMIT = 2**31 - 1  # the largest integer a decoder parameter takes (lengths, steps, intervals)
SEED_LIMIT = 2**64 - 1  # the largest sampling seed (torch generators take 64-bit seeds)
# a positive temperature: below the floor, tempered logits overflow (Dream's softmax(l / T) becomes NaN)
TEMPERATURE_RANGE = (1e-5, 100.0)


def check_seed(seed) -> None:
    """A sampling seed is None or an integer in ``[0, 2**64 - 1]``; else :class:`GenerationError`."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_LIMIT:
        raise GenerationError(f"seed must be an integer from 0 to 2**64 - 1, got {_short(seed)}")


def _short(value: Any) -> str:
    """``repr(value)``, shortened for a message (an integer of thousands of digits stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'more than 4000'} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Params:
    """Base of the per-method parameter dataclasses (reference names and defaults)."""

    aliases: ClassVar[dict[str, str]] = {"gen_length": "max_new_tokens", "block_length": "block_size"}
    # fields a request may set for its own row of a running batch (the others are shared by every row)
    per_row: ClassVar[tuple[str, ...]] = ("max_new_tokens", "temperature")
    # fields a model folder's defaults may not set for this method (e.g. Dream's single-block vanilla decoder)
    no_folder_default: ClassVar[frozenset[str]] = frozenset()

    # early exit (d3llm.decoding.early_exit), composable with every diffusion method
    early_exit: str | None = None  # None, "prophet" or "sched"
    exit_schedule: str | None = None  # prophet: "step" (the default); sched: "linear" (the default) or "cosine"
    exit_high: float = 7.5  # the logit gap needed at the start
    exit_low: float = 2.5  # ... and at the end
    exit_answer_start: int | None = None  # prophet: the answer region's first generated position
    exit_answer_length: int = 5
    EXIT_FIELDS: ClassVar[tuple[str, ...]] = ("exit_schedule", "exit_high", "exit_low", "exit_answer_start",
                                              "exit_answer_length")

    @classmethod
    def names(cls) -> list[str]:
        """The parameters, the method's own first, then the early-exit ones every diffusion method shares."""
        names = [f.name for f in dataclasses.fields(cls)]
        shared = ("early_exit", *cls.EXIT_FIELDS)
        return [n for n in names if n not in shared] + [n for n in names if n in shared]

    @classmethod
    def from_kwargs(cls, method: str, kwargs: dict[str, Any], defaults: dict[str, Any] | None = None,
                    default_source: str = "the model folder"):
        """Resolve the parameters (module docstring) and validate them.

        Args:
            kwargs: what the caller gave; alias spellings (``gen_length``, ``block_length``) are accepted.
            defaults: the model folder's defaults that apply to this method (unknown names are ignored).
            default_source: how messages name the folder defaults (e.g. the generation_config.json path).
        """
        names = cls.names()
        values: dict[str, Any] = {}
        spelling: dict[str, str] = {}
        for key, value in kwargs.items():
            target = cls.aliases.get(key, key)
            if target not in names:
                hint = did_you_mean(key, names + list(cls.aliases))
                raise GenerationError(
                    f"unknown parameter '{key}' for method '{method}'{hint}; valid parameters: {', '.join(names)}"
                )
            if target in values:
                raise GenerationError(
                    f"parameter '{target}' given twice for method '{method}': as '{spelling[target]}' and as "
                    f"'{key}'; pass one of them"
                )
            values[target] = value
            spelling[target] = key
        origin = {name: GIVEN for name in values}
        for name, value in (defaults or {}).items():
            if name in names and name not in values and name not in cls.no_folder_default:
                values[name] = value
                origin[name] = FOLDER
        params = cls(**values)
        params._origin = {name: origin.get(name, BUILTIN) for name in names}
        params._default_source = default_source
        params.derive()
        params.validate(method)
        params.validate_early_exit(method)
        return params

    def validate_early_exit(self, method: str) -> None:
        """The early-exit parameters (:mod:`d3llm.decoding.early_exit`); fills the rule's default schedule."""
        from d3llm.decoding.early_exit import RULES, SCHEDULES

        if self.early_exit is None:
            given = [name for name in self.EXIT_FIELDS if self.origin(name) == GIVEN]
            if given:
                raise GenerationError(f"{method}: {', '.join(given)} set without early_exit; pass early_exit="
                                      f"'prophet' or 'sched' (or leave the exit parameters out)")
            return
        self.check_choice(method, "early_exit", self.early_exit, (*RULES, None))
        if self.exit_schedule is None:
            self.exit_schedule = SCHEDULES[self.early_exit][0]
            self._origin["exit_schedule"] = DERIVED
        self.check_choice(method, "exit_schedule", self.exit_schedule, SCHEDULES[self.early_exit])
        self.check_range(method, "exit_high", self.exit_high, 0.0, None, "a logit gap")
        self.check_range(method, "exit_low", self.exit_low, 0.0, self.exit_high, "a logit gap at most exit_high")
        self.check_int(method, "exit_answer_start", self.exit_answer_start, minimum=0, allow_none=True,
                       maximum=self.max_new_tokens - 1, why=f"max_new_tokens - 1 = {self.max_new_tokens - 1}")
        self.check_int(method, "exit_answer_length", self.exit_answer_length, minimum=1)
        if self.exit_answer_start is not None and self.early_exit != "prophet":
            raise GenerationError(f"{method}: exit_answer_start is Prophet's answer region; early_exit="
                                  f"{self.early_exit!r} monitors every mask of the generation")

    def derive(self) -> None:
        """Fill parameters that follow others (``steps`` follows ``max_new_tokens``)."""
        if hasattr(self, "steps") and self.steps is None and self.derived_steps:
            self.steps = self.max_new_tokens
            self._origin["steps"] = DERIVED

    derived_steps: ClassVar[bool] = False  # True: steps=None means one token per forward

    def validate(self, method: str) -> None:  # pragma: no cover - every method overrides
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """The resolved values (a flat dict of scalars)."""
        return {name: getattr(self, name) for name in self.names()}

    def origin(self, name: str) -> str:
        return getattr(self, "_origin", {}).get(name, GIVEN)

    def label(self, name: str) -> str:
        """Where a value the caller did not give came from (empty for a given one)."""
        return {
            FOLDER: f" (default from {getattr(self, '_default_source', 'the model folder')})",
            BUILTIN: " (built-in default)",
            DERIVED: " (follows max_new_tokens: one token per forward)",
        }.get(self.origin(name), "")

    def show(self, name: str, value: Any = dataclasses.MISSING) -> str:
        """``name=value`` and, when the caller did not give it, where it came from."""
        value = getattr(self, name) if value is dataclasses.MISSING else value
        return f"{name}={_short(value)}{self.label(name)}"

    # -- shared checks ---------------------------------------------------------------------------------------------
    def check_int(self, method: str, name: str, value: Any, minimum: int = 1, allow_none: bool = False,
                  maximum: int = INT_LIMIT, why: str = "") -> None:
        """An integer in ``[minimum, maximum]`` (``why``: what the maximum is, for the message)."""
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
            limit = why or f"{maximum:,}"
            raise GenerationError(f"{method}: {name} must be an integer from {minimum} to {limit}, got "
                                  f"{_short(value)}{self.label(name)}")

    def check_range(self, method: str, name: str, value: Any, lo: float, hi: float | None, what: str,
                    allow_none: bool = False) -> None:
        """A finite number in ``[lo, hi]`` (``hi`` None: no upper bound but finiteness)."""
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise GenerationError(f"{method}: {name} must be a number, got {_short(value)}{self.label(name)}")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            raise GenerationError(f"{method}: {name} must be a finite number, got {_short(value)}{self.label(name)}")
        if value < lo or (hi is not None and value > hi):
            span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise GenerationError(f"{method}: {self.show(name, value)} is outside {span} ({what})")

    def check_temperature(self, method: str, name: str = "temperature", allow_none: bool = False) -> None:
        """0 (greedy) or a positive temperature within :data:`TEMPERATURE_RANGE`."""
        value = getattr(self, name)
        lo, hi = TEMPERATURE_RANGE
        self.check_range(method, name, value, 0.0, hi, f"0 for greedy decoding, else from {lo} to {hi}",
                         allow_none=allow_none)
        if value is not None and 0 < value < lo:
            raise GenerationError(f"{method}: {self.show(name, value)} is too small: a temperature is 0 (greedy) or "
                                  f"from {lo} to {hi} (tempered logits overflow below {lo})")

    def check_steps(self, method: str) -> None:
        """``steps`` of a step-schedule decoder: from 1 to ``max_new_tokens`` (every step commits a token)."""
        self.check_int(method, "steps", self.steps, maximum=self.max_new_tokens,
                       why=f"{self.show('max_new_tokens')} (every step commits at least one token)")

    def check_choice(self, method: str, name: str, value: Any, choices: tuple) -> None:
        if value not in choices:
            raise GenerationError(f"{method}: {self.show(name, value)} is not one of {', '.join(map(repr, choices))}")

    def check_bool(self, method: str, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            raise GenerationError(f"{method}: {name} must be True or False, got {getattr(self, name)!r}{self.label(name)}")

    def check_blocks(self, method: str) -> None:
        """``max_new_tokens`` must be a positive multiple of ``block_size`` (whole blocks are decoded)."""
        self.check_int(method, "max_new_tokens", self.max_new_tokens)
        self.check_int(method, "block_size", self.block_size)
        if self.max_new_tokens % self.block_size:
            raise GenerationError(
                f"{method}: {self.show('max_new_tokens')} is not a multiple of {self.show('block_size')}; "
                f"{method} decodes whole blocks (use e.g. max_new_tokens="
                f"{-(-self.max_new_tokens // self.block_size) * self.block_size}, or another block_size)"
            )
