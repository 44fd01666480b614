"""Writing, reading and pruning StudentModule history: the one place that knows about it."""

from __future__ import annotations


def connect_signals() -> None:
    """Connect the receiver that deletes history with its module."""
