"""What a home keeps on disk of its running tasks, so that a restarted daemon takes them back.

A home daemon may die (kill -9, a crash, a restart by systemd) while its tasks run on other
nodes. Those nodes keep the tasks for ``limits.home_restart`` seconds, and each mosrun waits
as long for its daemon to come back. A record per running task, under
``<state_dir>/sessions/``, root's alone, tells the new daemon which tasks were its own: their
spec (owner, command, the mosrun stream token that proves a returning mosrun is the same one)
and where each runs now.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.names import task_id_problem
from mosixd.wire.tls import write_private

log = logging.getLogger("mosixd.home.journal")


@dataclass
class SavedSession:
    """A running task of an earlier life of this daemon."""

    spec: pb.TaskSpec
    node_id: str  # where it ran when last heard of
    address: str  # and that node's address then


class SessionJournal:
    """One file per running task: written when it starts, moves or restarts, removed when its
    session ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, task_id: str) -> Path:
        return self.directory / f"{task_id}.json"

    def save(self, spec: pb.TaskSpec, node_id: str, address: str) -> None:
        """Record (or update) a running task; atomic, so a crash leaves the old record or the new."""
        text = json.dumps({"spec": base64.b64encode(spec.SerializeToString()).decode(), "node": node_id,
                           "address": address})
        write_private(self._path(spec.task_id), text.encode())

    def remove(self, task_id: str) -> None:
        self._path(task_id).unlink(missing_ok=True)

    def load(self) -> list[SavedSession]:
        """The records an earlier life left; unreadable ones are logged and removed."""
        saved: list[SavedSession] = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else ():
            try:
                raw = json.loads(path.read_text())
                spec = pb.TaskSpec.FromString(base64.b64decode(raw["spec"]))
                node_id, address = str(raw["node"]), str(raw["address"])
                if task_id_problem(spec.task_id) or f"{spec.task_id}.json" != path.name:
                    raise ValueError("its task id does not match its name")
            except (OSError, ValueError, KeyError, TypeError, DecodeError) as exc:
                log.warning("session record %s is unreadable (%s); removed", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            saved.append(SavedSession(spec, node_id, address))
        for stray in self.directory.glob(".*.tmp") if self.directory.is_dir() else ():
            stray.unlink(missing_ok=True)
        return saved
