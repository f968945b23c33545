"""mosrun: what a mosix user touches.

``from mosrun import resumable, safepoint`` makes a Python program movable between nodes; the
same program runs unchanged under plain python. The package has two layers:

- ``mosrun.runtime``: what runs inside a task (standard library only);
- ``mosrun.commands``: the command-line tools (``mosrun``, ``mosmon``, ``mosctl``, ``mosps``,
  ``migrate``) and their client, the top of the stack.

Importing ``mosrun`` loads only the task API, so a task pays nothing for the tools.
"""

from mosrun.runtime.task import ResumableState, resumable, safepoint

__all__ = ["ResumableState", "resumable", "safepoint"]
