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
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _id_problem(kind: str, value: str, longest: int) -> str | None:
    if not value:
        return f"the {kind} id is empty"
    if len(value) > longest:
        return f"the {kind} id is longer than {longest} characters"
    if not _ID.fullmatch(value):
        return f"the {kind} id {value[:40]!r} holds characters other than letters, digits, '.', '_' and '-'"
    return None


def task_id_problem(task_id: str) -> str | None:
    """None if ``task_id`` is a well-formed task id, else why not (one line)."""
    return _id_problem("task", task_id, MAX_ID_LENGTH)


def node_id_problem(node_id: str) -> str | None:
    """None if ``node_id`` is a well-formed node id (a host-name-like word), else why not."""
    return _id_problem("node", node_id, MAX_NODE_ID_LENGTH)
