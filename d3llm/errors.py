"""Exceptions raised for bad user input.

Every error names the file, key or value at fault and what was expected, so that the CLI can print the
message alone (no traceback) and a library user can catch one base class.
"""


class D3LLMError(Exception):
    """Base class of all errors d3llm raises for bad input or unusable files."""


class CheckpointError(D3LLMError, ValueError):
    """A model or tokenizer folder is missing, incomplete, corrupted or of an unsupported layout."""


class ConfigError(D3LLMError, ValueError):
    """A configuration value (config.json field, named config, dtype, device) is unusable."""


class GenerationError(D3LLMError, ValueError):
    """A decoding parameter or prompt is invalid."""


class AUPError(D3LLMError, ValueError):
    """An accuracy-parallelism curve or leaderboard that AUP cannot score (bad points, a drop below the floor)."""
