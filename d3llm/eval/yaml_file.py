"""Reading the YAML files of evaluation (leaderboards, sweep settings) with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from d3llm.errors import ConfigError
from d3llm.files import read_text


def read_yaml(path: str | os.PathLike, what: str, expected: str):
    """The parsed content of the YAML file ``path``; a missing file or bad YAML is a
    :class:`~d3llm.errors.ConfigError` saying ``what`` the file is and what it should hold (``expected``)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what} '{file}' does not exist; expected {expected}")
    text = read_text(file, ConfigError)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from None
