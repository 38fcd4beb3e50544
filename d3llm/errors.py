"""Exceptions raised for bad user input.

Every error names the file, key or value at fault and what was expected, so that the CLI can print the
message alone (no traceback) and a library user can catch one base class.
"""


def did_you_mean(value, options) -> str:
    """`` (did you mean 'x'?)`` naming the option closest to ``value``, or an empty string when none is close."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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


class WriteError(D3LLMError, OSError):
    """An output cannot be written: its path is not a regular file (a device, a FIFO, a folder), or the system
    refused the write (read-only file system, full disk, no permission). No partial file is left behind.

    ``path`` is the output path, ``reason`` the cause (e.g. ``No space left on device``), ``errno`` the OS error
    number when there is one."""

    def __init__(self, path, reason: str, *, message: str | None = None, errno: int | None = None):
        self.message = message or f"cannot write {path}: {reason}"
        super().__init__(self.message)
        self.path, self.reason = str(path), reason
        self.errno, self.filename = errno, str(path)

    def __str__(self) -> str:  # OSError's own would print "[Errno N] None: 'path'" once errno is set
        return self.message
