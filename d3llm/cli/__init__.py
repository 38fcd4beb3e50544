"""Command-line entry points (``d3llm <command>``); each command lives in its own module."""
