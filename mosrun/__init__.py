"""mosrun: what a mosix user touches — the command-line tools and the task API.

``from mosrun import resumable, safepoint`` makes a Python program movable between nodes;
the same program runs unchanged under plain python.
"""

from mosrun.task import ResumableState, resumable, safepoint

__all__ = ["ResumableState", "resumable", "safepoint"]
