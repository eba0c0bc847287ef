"""Errors that dsel raises for a user's mistake.

Each one carries a message that says what is wrong and how to fix it; the CLI prints it
on one line and exits with status 2 instead of showing a stack trace.
"""
from __future__ import annotations


class DselError(Exception):
    """A user's mistake (bad path, wrong column, bad config value, ...), with the fix in the message."""


class ConfigError(DselError):
    """A configuration key has a value that dsel cannot use."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key
