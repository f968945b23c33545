"""The tools' door: a Unix socket any local user may open, where the kernel says who they are.

mosmon, mosctl, mosps and migrate speak here, in ``mosrun.runtime.frames``: a request
``{"t": "call", "op": ..., "args": {...}}``, an answer ``{"t": "reply", "result": {...}}`` or
``{"t": "error", "code": "refused" | "invalid" | "failed", "message": ...}``. Users hold no
cluster credential. Their uid comes from the socket's peer credentials (SO_PEERCRED), never
from a message, and decides what they may do:

- everyone sees the cluster's nodes and load, and their own tasks in full; other users' tasks
  only as a count;
- a user moves only their own tasks; the node asks the task's home as a node, naming the uid
  it vouches for;
- blocking a node, and seeing or moving every task, are for root, the daemon's own user and
  members of the configured admin group.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from mosixd.core.gossip import NodeView
from mosixd.home.context import SessionLimits
from mosixd.home.sessions import peer_credentials
from mosixd.wire import codec
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.auth import RefusalLog
from mosixd.wire.names import task_id_problem
from mosrun.runtime import frames

log = logging.getLogger("mosixd.userapi")

IDLE_TIMEOUT = 60.0  # a tool's connection with no request for this long is closed
MIGRATE_TIMEOUT = 900.0


class ToolsNode(Protocol):
    """What the tools may ask of the node."""

    node_id: str

    def cluster_view(self) -> list[NodeView]: ...

    def tables(self) -> dict[str, int]: ...

    def task_list(self) -> list[pb.TaskInfo]: ...

    def set_blocked(self, blocked: bool) -> NodeView: ...

    async def migrate(self, request: pb.MigrateRequest) -> pb.MigrateReply: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end of a connection, as the kernel says."""

    uid: int
    user: str
    privileged: bool  # root, the daemon's own user, or a member of the admin group


class Refused(Exception):
    """The caller may not do this (one line)."""


class Invalid(Exception):
    """The request is malformed (one line)."""


def identify(uid: int, gid: int, admin_group: str) -> Caller:
    """The caller with uid ``uid`` and primary group ``gid``, looked up on this machine."""
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = set(os.getgrouplist(name, gid))
    except KeyError:
        name, groups = str(uid), {gid}
    admin = False
    if admin_group:
        with contextlib.suppress(KeyError):
            admin = grp.getgrnam(admin_group).gr_gid in groups
    return Caller(uid, name, uid == 0 or uid == os.geteuid() or admin)


class UserApi:
    """Serves the tools on one Unix socket (mode 0666: the kernel, not the mode, decides)."""

    def __init__(self, node: ToolsNode, *, limits: SessionLimits, admin_group: str = "") -> None:
        self._node = node
        self._limits = limits
        self._admin_group = admin_group
        self._server: asyncio.base_events.Server | None = None
        self._open: dict[asyncio.Task[None], int] = {}  # connections -> the peer's uid
        self._refusals = RefusalLog()
        self._ops: dict[str, Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "status": self._status, "tasks": self._tasks, "migrate": self._migrate, "block": self._block,
        }

    def connections(self) -> int:
        """Tool connections open now."""
        return len(self._open)

    @property
    def refused(self) -> int:
        """Requests and connections refused or dropped so far."""
        return self._refusals.count

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        os.chmod(path, 0o666)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._open):
            task.cancel()
        if self._open:
            await asyncio.wait(self._open, timeout=3)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        _pid, uid, gid = peer_credentials(writer)
        try:
            if refusal := self._limits.refusal(self._open.values(), uid, "tool connections"):
                self._refusals.note(str(uid), "connection", refusal)
                await self._send(writer, {"t": "error", "code": "refused", "message": refusal})
                return
            self._open[task] = uid
            caller = identify(uid, gid, self._admin_group)
            await self._serve(caller, reader, writer)
        except (ConnectionError, frames.ProtocolError, TimeoutError) as exc:
            self._refusals.note(str(uid), "connection", f"dropped: {exc or type(exc).__name__}")
        finally:
            self._open.pop(task, None)
            writer.close()

    async def _serve(self, caller: Caller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(1_000_000):  # bounded; a tool asks a few times a second at most
            async with asyncio.timeout(IDLE_TIMEOUT):
                frame = await frames.read_frame(reader, max_payload=0)  # a tool's calls are headers
            if frame is None:
                return
            header, _ = frame
            await self._send(writer, await self._answer(caller, header))

    async def _answer(self, caller: Caller, header: dict[str, Any]) -> dict[str, Any]:
        op, args = header.get("op"), header.get("args", {})
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if header.get("t") != "call" or handler is None or not isinstance(args, dict):
                raise Invalid(f"unknown request {str(op)[:40]!r}")
            return {"t": "reply", "result": await handler(caller, args)}
        except Refused as exc:
            self._refusals.note(caller.user, str(op), str(exc))
            return {"t": "error", "code": "refused", "message": str(exc)}
        except Invalid as exc:
            return {"t": "error", "code": "invalid", "message": str(exc)}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, header: dict[str, Any]) -> None:
        writer.write(frames.encode(header))
        await writer.drain()

    # ---- the operations ---------------------------------------------------------------

    async def _status(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"node": self._node.node_id, "tables": dict(sorted(self._node.tables().items())),
                "nodes": [codec.node_status_to_dict(codec.node_to_pb(v)) for v in self._node.cluster_view()]}

    async def _tasks(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        infos = self._node.task_list()
        shown = [t for t in infos if caller.privileged or t.user == caller.user]
        return {"node": self._node.node_id, "tasks": [codec.task_info_to_dict(t) for t in shown],
                "others": len(infos) - len(shown)}

    async def _migrate(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        task_id, target = args.get("task"), args.get("target")
        if not isinstance(task_id, str) or not isinstance(target, str):
            raise Invalid("migrate needs a task id and a target")
        if problem := task_id_problem(task_id):
            raise Invalid(problem)
        # The node vouches for the uid the kernel gave; privileged callers move any task.
        request = pb.MigrateRequest(task_id=task_id, target=target, uid=0 if caller.privileged else caller.uid)
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            reply = await self._node.migrate(request)
        return codec.migrate_reply_to_dict(reply)

    async def _block(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if not caller.privileged:
            group = f" or of group {self._admin_group}" if self._admin_group else ""
            raise Refused(f"only root{group} may block or unblock a node ({caller.user} may not)")
        blocked = args.get("blocked")
        if not isinstance(blocked, bool):
            raise Invalid("block needs blocked: true or false")
        return codec.node_status_to_dict(codec.node_to_pb(self._node.set_blocked(blocked)))
