"""What can go wrong with a checkpoint: each message is one line for the user."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint cannot be made or read; the message is one line for the user."""


class UnpicklableState(CheckpointError):
    """Part of the state cannot be pickled; the message names where and its type."""


class CorruptCheckpoint(CheckpointError):
    """Bad magic, unknown format version, truncated data or checksum mismatch."""


class IncompatibleCheckpoint(CheckpointError):
    """Intact, but from another Python major.minor or a pickler not installed here."""
