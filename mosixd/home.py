"""The home node's side of a task: the session with the user's mosrun, placement, and the
relay to wherever the task runs.

mosrun connects to the session socket (beside the daemon's gRPC socket) and speaks frames
(``mosrun.frames``). The kernel tells us who is connecting (SO_PEERCRED), so the task's owner
is known without any key. Frames:

  mosrun -> daemon  launch {argv, executable, python, python_options, python_args, env, cwd,
                            umask, ttys, where: best|home|node, node, memory_mb, queue, job_name}
                    stdin (payload), stdin_eof, signal {sig}, proxy (payload: a runtime frame)
  daemon -> mosrun  started {task, node}, queued {reason}, stdout, stderr (payload),
                    proxy (payload), stdin_ack {n}, exit {code, signal}, error {message, code}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from mosixd.gossip import NodeState
from mosixd.migration import (EndSourceCopy, Migration, MigrationPlan, ReleaseTarget, Report, RequestFreeze,
                              ReserveTarget, ResumeSource, SendChunk, StartOnTarget)
from mosixd.policy import JobRequest, NoRoom
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire import mosix_pb2_grpc as rpc
from mosrun import frames
from mosrun.checkpoint import checkpoint_path, keep_last
from mosrun.checkpoint import list_checkpoints as checkpoint_files

if TYPE_CHECKING:
    from mosixd.node import NodeDaemon

log = logging.getLogger("mosixd.home")

# A stream whose peer died fails with either, depending on when the failure is noticed.
CALL_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError)
EXIT_LAUNCH = 125   # mosrun could not start the task (documented in the README)
EXIT_LOST = 255     # the node running the task died or became unreachable
QUEUE_RETRY = 1.0
FREEZE_TIMEOUT = 30.0     # a task that reaches no safe point in this long is not checkpointed
KEEP_CHECKPOINTS = 3
SESSION_BUFFER = 4 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LaunchError(Exception):
    """The task cannot be started; the message is for the user."""


@dataclass
class TaskRecord:
    """What the home node knows of one of its tasks (mosps)."""

    id: str
    user: str
    command: str
    started: float
    state: str = "starting"
    where: str = ""
    pid: int = 0
    cpu: float = 0.0
    rss: int = 0


@dataclass
class LiveTask:
    """A running task's session at home: which stream and node it is on now."""

    spec: pb.TaskSpec
    record: TaskRecord
    call: grpc.aio.StreamStreamCall
    node_id: str
    movable: bool = False
    # While a move is under way: what the source sends about it, and the stream to switch to
    # once the source copy has ended.
    move_events: asyncio.Queue[pb.HostEvent | None] | None = None
    switch_to: tuple[grpc.aio.StreamStreamCall, str] | None = None
    freezes: int = 0
    freeze_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one move or checkpoint at a time


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _spec_from_launch(header: dict[str, Any], uid: int) -> pb.TaskSpec:
    """Validate a launch frame; raises LaunchError naming what is wrong."""
    try:
        argv = [str(a) for a in header["argv"]]
        env = {str(k): str(v) for k, v in dict(header.get("env", {})).items()}
        ttys = [bool(t) for t in header.get("ttys", [False] * 3)][:3] + [False] * 3
        spec = pb.TaskSpec(
            argv=argv, executable=str(header["executable"]), python=bool(header.get("python")),
            python_options=[str(a) for a in header.get("python_options", [])],
            python_args=[str(a) for a in header.get("python_args", [])], env=env,
            cwd=str(header["cwd"]), umask=int(header.get("umask", 0o022)) & 0o777,
            memory_mb=max(0, int(header.get("memory_mb", 0))), job_name=str(header.get("job_name", "")),
            locked=bool(header.get("locked", False)),
            checkpoint_every=max(0.0, float(header.get("checkpoint_every", 0.0) or 0.0)),
            stdin_tty=ttys[0], stdout_tty=ttys[1], stderr_tty=ttys[2], uid=uid, started=time.time(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LaunchError(f"malformed launch request ({exc!r})") from None
    if not argv or not os.path.isabs(spec.executable) or not os.path.isabs(spec.cwd):
        raise LaunchError("malformed launch request (empty command or relative paths)")
    try:
        user = pwd.getpwuid(uid)
        spec.user, spec.gid = user.pw_name, user.pw_gid
    except KeyError:
        spec.user, spec.gid = str(uid), uid
    return spec


async def _close_gently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 5.0) -> None:
    """Half-close, then drain what mosrun still sends until it closes: closing a Unix socket
    with unread data makes the peer's next read fail before it sees our last frame."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


class HomeSessions:
    """The sessions of the tasks whose home is this node."""

    def __init__(self, node: "NodeDaemon") -> None:
        self._node = node
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.records: dict[str, TaskRecord] = {}
        self.live: dict[str, LiveTask] = {}

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        os.chmod(path, 0o666)  # any local user may submit; the kernel tells us who they are

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.cancel()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=3)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, frames.ProtocolError) as exc:
            log.info("session ended: %s", exc)
        except Exception as exc:  # a bug must cost one session, not the daemon; say it loudly
            log.exception("session failed")
            with contextlib.suppress(Exception):
                writer.write(frames.encode({"t": "error", "code": EXIT_LAUNCH,
                                            "message": f"internal error in the home daemon: {exc!r}"}))
                await writer.drain()
        finally:
            self._sessions.discard(task)
            await _close_gently(reader, writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SESSION_BUFFER)

        async def send(header: dict[str, Any], payload: bytes = b"") -> None:
            writer.write(frames.encode_head(header, len(payload)))
            if payload:
                writer.write(payload)  # no concatenation: output arrives in MiB chunks
            await writer.drain()

        frame = await frames.read_frame(reader)
        if frame is None:
            return
        header, _ = frame
        task_id = f"{self._node.node_id}.{self._node.generation}.{next(self._ids)}"
        try:
            if header["t"] != "launch":
                raise LaunchError(f"expected a launch request, got {header['t']!r}")
            spec = _spec_from_launch(header, _peer_uid(writer))
            spec.task_id, spec.home = task_id, self._node.node_id
            spec.python_version = self._node.python if spec.python else ""
            record = self.records[task_id] = TaskRecord(
                id=task_id, user=spec.user, command=" ".join(spec.argv), started=spec.started)
            call, node_id = await self._launch(spec, header, record, send)
            live = self.live[task_id] = LiveTask(spec=spec, record=record, call=call, node_id=node_id)
            storing = asyncio.create_task(self._store_checkpoints(live)) if spec.checkpoint_every else None
            try:
                record.state, record.where = "running", node_id
                await self._relay(live, reader, send)
            finally:
                if storing is not None:
                    storing.cancel()
                    await asyncio.gather(storing, return_exceptions=True)
                for old in checkpoint_files(self._checkpoint_dir, task_id):
                    old.unlink(missing_ok=True)
                live.call.cancel()
                if live.switch_to:
                    live.switch_to[0].cancel()
        except LaunchError as exc:
            await send({"t": "error", "message": str(exc), "code": EXIT_LAUNCH})
        finally:
            self.records.pop(task_id, None)
            self.live.pop(task_id, None)

    async def _launch(self, spec: pb.TaskSpec, header: dict[str, Any], record: TaskRecord,
                      send: Any) -> tuple[grpc.aio.StreamStreamCall, str]:
        """Place the task and start it; try the next candidate when a node refuses."""
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        said_queued = False
        while True:
            refusals: dict[str, str] = {}
            for node_id, address in self._candidates(header, job, refusals):
                reservation = self._node.placement.reserve(node_id, job, self._node.now())
                call = rpc.HostStub(self._node.channel(address)).Execute()
                try:
                    await call.write(pb.HomeMessage(start=spec))
                    event = await call.read()
                except grpc.aio.AioRpcError as exc:
                    self._node.placement.release(reservation)
                    refusals[node_id] = f"unreachable ({exc.code().name.lower()})"
                    continue
                kind = event.WhichOneof("kind") if event is not grpc.aio.EOF else None
                if kind == "started":
                    await send({"t": "started", "task": spec.task_id, "node": node_id, "pid": event.started.pid})
                    record.pid = event.started.pid
                    return call, node_id
                self._node.placement.release(reservation)
                call.cancel()
                refusals[node_id] = event.refused.reason if kind == "refused" else "closed the stream"
                if kind == "refused" and not event.refused.retry:
                    raise LaunchError(event.refused.reason)
            why = "; ".join(f"{n}: {r}" for n, r in refusals.items()) or "no node known"
            if not header.get("queue"):
                raise LaunchError(f"no node can take the task ({why})")
            if not said_queued:
                record.state = "queued"
                await send({"t": "queued", "reason": why})
                said_queued = True
            await asyncio.sleep(QUEUE_RETRY)

    def _candidates(self, header: dict[str, Any], job: JobRequest, refusals: dict[str, str]) -> list[tuple[str, str]]:
        views = self._node.cluster_view()
        where = header.get("where", "best")
        if where == "home":
            return [(views[0].id, views[0].address)]
        if where == "node":
            wanted = str(header.get("node", ""))
            view = next((v for v in views if v.id == wanted or v.address == wanted), None)
            if view is None:
                known = ", ".join(v.id for v in views)
                raise LaunchError(f"unknown node {wanted!r} (known: {known})")
            if view.state is NodeState.DOWN:
                refusals[view.id] = "down"
                return []
            return [(view.id, view.address)]
        try:
            return [(c.node_id, c.address) for c in self._node.placement.rank(views, job, self._node.now())]
        except NoRoom as exc:
            refusals.update(exc.reasons)
            return []

    async def migrate(self, task_id: str, target: str, uid: int) -> pb.MigrateReply:
        """Move one of this node's tasks to ``target`` (a node id, "home" or "balance")."""
        live = self.live.get(task_id)
        if live is None:
            return pb.MigrateReply(ok=False, message=f"no running task {task_id} has its home on {self._node.node_id}")
        if uid not in (0, live.spec.uid):
            return pb.MigrateReply(ok=False, message=f"only the owner of task {task_id} ({live.spec.user}) or root may move it")
        if live.freeze_lock.locked():
            return pb.MigrateReply(ok=False, node=live.node_id,
                                   message=f"task {task_id} is already moving or being checkpointed")
        if not live.movable:
            return pb.MigrateReply(ok=False, node=live.node_id, message=(
                f"task {task_id} cannot move: it has no safe points (a Python task must call mosrun.resumable())"))
        try:
            target_id, address = self._move_target(live, target)
        except LaunchError as exc:
            return pb.MigrateReply(ok=False, node=live.node_id, message=str(exc))
        if target_id == live.node_id:
            return pb.MigrateReply(ok=True, node=live.node_id, message=f"task {task_id} already runs on {target_id}")
        async with live.freeze_lock:
            live.move_events = asyncio.Queue()
            try:
                return await self._move(live, target_id, address)
            finally:
                live.move_events = None

    def _move_target(self, live: LiveTask, target: str) -> tuple[str, str]:
        views = self._node.cluster_view()
        if target == "home":
            return views[0].id, views[0].address
        if target == "balance":
            job = JobRequest(memory_mb=live.spec.memory_mb, python=live.spec.python_version)
            try:
                best = self._node.placement.rank(views, job, self._node.now(), exclude=[live.node_id])[0]
            except NoRoom as exc:
                raise LaunchError(f"no other node can take task {live.spec.task_id} ({exc.reasons})") from None
            return best.node_id, best.address
        view = next((v for v in views if v.id == target or v.address == target), None)
        if view is None:
            raise LaunchError(f"unknown node {target!r} (known: {', '.join(v.id for v in views)})")
        if view.state is not NodeState.UP:
            raise LaunchError(f"node {view.id} is {view.state.value}")
        return view.id, view.address

    async def _move(self, live: LiveTask, target_id: str, address: str) -> pb.MigrateReply:
        """Drive one move with the Migration state machine; the task keeps running on any failure."""
        assert live.move_events is not None
        plan = MigrationPlan(task_id=live.spec.task_id, source=live.node_id, target=target_id,
                             reason="manual", home=self._node.node_id)
        machine = Migration(plan, self._node.now())
        spec = pb.TaskSpec()
        spec.CopyFrom(live.spec)
        spec.epoch += 1
        live.freezes += 1
        freeze_id = live.freezes
        new_call: grpc.aio.StreamStreamCall | None = None
        outcome, ok, frozen_asked = "", False, False
        pending = machine.start(self._node.now())
        while True:
            while pending:
                action = pending.pop(0)
                now = self._node.now()
                if isinstance(action, ReserveTarget):
                    new_call = rpc.HostStub(self._node.channel(address)).Execute()
                    why = await self._exchange(new_call, pb.HomeMessage(reserve=spec), "reserved", plan.reserve_timeout)
                    now = self._node.now()
                    pending += machine.target_reserved(now) if why is None else machine.target_refused(why, now)
                elif isinstance(action, RequestFreeze):
                    frozen_asked = True
                    await self._to_task(live, pb.HomeMessage(freeze=freeze_id))
                elif isinstance(action, SendChunk):
                    pending += machine.chunk_acked(action.offset, action.size, now)  # relayed as it came
                elif isinstance(action, StartOnTarget) and new_call is not None:
                    why = await self._exchange(new_call, pb.HomeMessage(start=spec), "started", plan.start_timeout)
                    now = self._node.now()
                    pending += machine.target_started(now) if why is None else machine.target_failed(why, now)
                elif isinstance(action, EndSourceCopy) and new_call is not None:
                    live.switch_to = (new_call, target_id)
                    await self._to_task(live, pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=True)))
                elif isinstance(action, ResumeSource) and frozen_asked:
                    with contextlib.suppress(*CALL_ERRORS):
                        await live.call.write(pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=False)))
                elif isinstance(action, ReleaseTarget) and new_call is not None and live.switch_to is None:
                    new_call.cancel()
                elif isinstance(action, Report):
                    outcome, ok = action.outcome, action.ok
            if machine.finished:
                break
            timeout = max(0.01, (machine.deadline or self._node.now() + 1.0) - self._node.now())
            try:
                event = await asyncio.wait_for(live.move_events.get(), timeout)
            except TimeoutError:
                pending += machine.tick(self._node.now())
                continue
            now = self._node.now()
            kind = event.WhichOneof("kind") if event is not None else None
            if kind is None:
                pending += machine.peer_lost(live.node_id, now)
            elif kind == "checkpoint" and new_call is not None:
                try:
                    await new_call.write(pb.HomeMessage(checkpoint=event.checkpoint))
                except CALL_ERRORS:
                    pending += machine.peer_lost(target_id, now)
            elif kind == "frozen":
                pending += machine.frozen(event.frozen, now)
            elif kind == "freeze_failed":
                pending += machine.freeze_failed(event.freeze_failed, now)
        log.info("%s", outcome)
        return pb.MigrateReply(ok=ok, message=outcome, node=target_id if ok else live.node_id,
                               freeze_seconds=machine.freeze_duration or 0.0)

    @staticmethod
    async def _exchange(call: grpc.aio.StreamStreamCall, message: pb.HomeMessage, expect: str,
                        timeout: float) -> str | None:
        """Send one message on a task stream and wait for the answer: None if it is ``expect``,
        else why not."""
        try:
            await call.write(message)
            event = await asyncio.wait_for(call.read(), timeout)
        except (*CALL_ERRORS, TimeoutError) as exc:
            return f"no answer ({type(exc).__name__})"
        kind = event.WhichOneof("kind") if event is not grpc.aio.EOF else None
        if kind == expect:
            return None
        return event.refused.reason if kind == "refused" else "closed the stream"

    async def _relay(self, live: LiveTask, reader: asyncio.StreamReader, send: Any) -> None:
        upstream = asyncio.create_task(self._from_mosrun(reader, live))
        record, spec = live.record, live.spec
        try:
            while True:
                read = asyncio.ensure_future(live.call.read())
                await asyncio.wait({read, upstream}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    return  # mosrun left: the caller cancels the call, which ends the task
                try:
                    event = read.result()
                except grpc.aio.AioRpcError as exc:
                    if live.move_events is not None:
                        live.move_events.put_nowait(None)  # the source is lost mid-move
                    if live.switch_to is not None:
                        self._switch(live)  # the source died after the target took over
                        continue
                    if await self._failover(live, send):
                        continue
                    await send({"t": "error", "code": EXIT_LOST,
                                "message": f"node {record.where} running task {spec.task_id} was lost "
                                           f"({exc.code().name.lower()})"})
                    return
                if event is grpc.aio.EOF:
                    if live.switch_to is not None:
                        self._switch(live)
                        continue
                    if await self._failover(live, send):
                        continue
                    await send({"t": "error", "code": EXIT_LOST,
                                "message": f"node {record.where} ended task {spec.task_id} without an exit status"})
                    return
                kind = event.WhichOneof("kind")
                if kind in ("stdout", "stderr", "proxy"):
                    await send({"t": kind}, getattr(event, kind))
                elif kind == "stdin_ack":
                    await send({"t": "stdin_ack", "n": event.stdin_ack})
                elif kind == "usage":
                    record.cpu, record.rss = event.usage.cpu, event.usage.rss
                elif kind == "movable":
                    live.movable = True
                elif kind in ("checkpoint", "frozen", "freeze_failed"):
                    if live.move_events is not None:
                        await live.move_events.put(event)
                elif kind == "exited":
                    if live.switch_to is not None:
                        self._switch(live)  # the copy that moved away ended; go on with the new one
                        continue
                    await send({"t": "exit", "code": event.exited.code, "signal": event.exited.signal})
                    return
        finally:
            # Wait for the cancellation: the session then drains mosrun's socket itself, and a
            # stream may have only one reader.
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)

    @property
    def _checkpoint_dir(self) -> Path:
        return self._node.config.state_dir / "checkpoints"

    async def _store_checkpoints(self, live: LiveTask) -> None:
        """mosrun -A: every so often, checkpoint the task to this (home) node."""
        while True:
            await asyncio.sleep(live.spec.checkpoint_every)
            if not live.movable or live.freeze_lock.locked():
                continue
            async with live.freeze_lock:
                live.move_events = asyncio.Queue()
                try:
                    await self._store_one(live)
                except OSError as exc:  # a full disk must not end the task
                    log.warning("task %s: checkpoint not stored: %s", live.spec.task_id, exc)
                finally:
                    live.move_events = None

    async def _store_one(self, live: LiveTask) -> None:
        assert live.move_events is not None
        live.freezes += 1
        freeze_id, epoch = live.freezes, live.spec.epoch + live.freezes
        directory = self._checkpoint_dir
        directory.mkdir(parents=True, exist_ok=True)
        final = checkpoint_path(directory, live.spec.task_id, epoch)
        tmp = final.with_name(f".{final.name}.tmp")
        await self._to_task(live, pb.HomeMessage(freeze=freeze_id))
        try:
            with open(tmp, "wb") as out:
                while True:
                    event = await asyncio.wait_for(live.move_events.get(), FREEZE_TIMEOUT)
                    kind = event.WhichOneof("kind") if event is not None else None
                    if kind == "checkpoint":
                        out.write(event.checkpoint)
                    elif kind == "frozen":
                        out.flush()
                        os.fsync(out.fileno())
                        break
                    else:
                        log.info("task %s: no checkpoint this time (%s)", live.spec.task_id,
                                 event.freeze_failed if kind == "freeze_failed" else "its node is gone")
                        return
            os.replace(tmp, final)
            _fsync_dir(directory)
            keep_last(directory, live.spec.task_id, KEEP_CHECKPOINTS)
        except TimeoutError:
            log.warning("task %s: checkpoint timed out", live.spec.task_id)
        finally:
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(*CALL_ERRORS):
                await live.call.write(pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=False)))

    async def _failover(self, live: LiveTask, send: Any) -> bool:
        """The node running the task is gone: restart it elsewhere from its latest checkpoint."""
        files = checkpoint_files(self._checkpoint_dir, live.spec.task_id) if live.spec.checkpoint_every else []
        if not files:
            return False
        latest, dead = files[-1], live.node_id
        stored_at = time.strftime("%H:%M:%S", time.localtime(latest.stat().st_mtime))
        spec = pb.TaskSpec()
        spec.CopyFrom(live.spec)
        spec.epoch = int(latest.name.rsplit(".", 2)[-2]) + 1
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        try:
            choices = self._node.placement.rank(self._node.cluster_view(), job, self._node.now(), exclude=[dead])
        except NoRoom:
            return False
        for choice in choices:
            call = rpc.HostStub(self._node.channel(choice.address)).Execute()
            why = await self._exchange(call, pb.HomeMessage(reserve=spec), "reserved", 10)
            if why is None:
                try:
                    with open(latest, "rb") as f:
                        while chunk := f.read(1 << 20):
                            await call.write(pb.HomeMessage(checkpoint=chunk))
                except (*CALL_ERRORS, OSError) as exc:
                    why = str(exc)
            if why is None:
                why = await self._exchange(call, pb.HomeMessage(start=spec), "started", 30)
            if why is not None:
                log.info("task %s: %s cannot take it over: %s", live.spec.task_id, choice.node_id, why)
                call.cancel()
                continue
            live.call.cancel()
            live.call, live.node_id, live.record.where = call, choice.node_id, choice.node_id
            live.spec.epoch = spec.epoch
            await send({"t": "notice", "text": f"node {dead} running task {live.spec.task_id} was lost; "
                                               f"restarted on {choice.node_id} from its checkpoint of {stored_at}"})
            log.info("task %s: restarted on %s from %s after %s was lost", live.spec.task_id, choice.node_id,
                     latest.name, dead)
            return True
        return False

    @staticmethod
    def _switch(live: LiveTask) -> None:
        """After a move: all output of the old copy has been relayed; follow the new one."""
        assert live.switch_to is not None
        live.call.cancel()
        live.call, live.node_id = live.switch_to
        live.record.where = live.node_id
        live.switch_to = None

    async def _from_mosrun(self, reader: asyncio.StreamReader, live: LiveTask) -> None:
        """stdin, signals and proxy replies from the user's side to the task."""
        try:
            while (frame := await frames.read_frame(reader)) is not None:
                header, payload = frame
                kind = header["t"]
                if kind == "stdin":
                    await self._to_task(live, pb.HomeMessage(stdin=payload))
                elif kind == "stdin_eof":
                    await self._to_task(live, pb.HomeMessage(stdin_eof=True))
                elif kind == "signal":
                    await self._to_task(live, pb.HomeMessage(signal=int(header["sig"])))
                elif kind == "proxy":
                    await self._to_task(live, pb.HomeMessage(proxy=payload))
        except (frames.ProtocolError, ConnectionError, KeyError, ValueError) as exc:
            log.warning("session of a task broke: %s", exc)
        except grpc.aio.AioRpcError:
            # The host side failed; the relay reports it. Keep waiting for mosrun to leave.
            await reader.read()
        # Returning tells the relay that mosrun is gone (or broke the protocol).

    @staticmethod
    async def _to_task(live: LiveTask, message: pb.HomeMessage) -> None:
        """Write to the task's current stream; after a move, to the copy that took over."""
        call = live.call
        try:
            await call.write(message)
        except CALL_ERRORS:
            if live.switch_to is not None:
                await live.switch_to[0].write(message)
            elif live.call is not call:
                await live.call.write(message)
            else:
                raise
