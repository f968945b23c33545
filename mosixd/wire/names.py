"""Names that arrive over the wire or from a config: checked before any use.

A task id names a scratch directory and appears in logs, so an id such as ``../../etc``
must never reach a path. Ids are made by home daemons as ``<node>.<generation>.<n>``; the
check accepts a little more (any node name a config may hold) but never a separator, a
leading dot or a control character.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 128
MAX_NODE_ID_LENGTH = 64
MAX_ADDRESS_LENGTH = 261  # a 253-character host name, ':' and a port
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def task_id_problem(task_id: str) -> str | None:
    """None if ``task_id`` is a well-formed task id, else why not (one line)."""
    if not task_id:
        return "the task id is empty"
    if len(task_id) > MAX_ID_LENGTH:
        return f"the task id is longer than {MAX_ID_LENGTH} characters"
    if not _TASK_ID.fullmatch(task_id):
        return f"the task id {task_id[:40]!r} holds characters other than letters, digits, '.', '_' and '-'"
    return None


def node_id_problem(node_id: str) -> str | None:
    """None if ``node_id`` is a well-formed node id (a host-name-like word), else why not."""
    if not node_id:
        return "the node id is empty"
    if len(node_id) > MAX_NODE_ID_LENGTH:
        return f"the node id is longer than {MAX_NODE_ID_LENGTH} characters"
    if not _TASK_ID.fullmatch(node_id):
        return f"the node id {node_id[:40]!r} holds characters other than letters, digits, '.', '_' and '-'"
    return None
