"""The home node's side of a task: the session with the user's mosrun, placement, and the
control stream to wherever the task runs.

mosrun connects to the session socket (beside the daemon's gRPC socket) and speaks frames
(``mosrun.runtime.frames``). The kernel tells us who is connecting (SO_PEERCRED), so the task's owner
is known without any key. Frames:

  daemon -> mosrun  hello {task, host, home_restart}: the task's id, and this node's address,
                    where mosrun takes the task's streams (``mosrun.commands.dataplane``); how
                    long mosrun waits for this daemon to come back if it goes away
  mosrun -> daemon  reattach {task, token}: instead of a launch, to a restarted daemon: take
                    back the task this mosrun started (the token is its streams' token)
  mosrun -> daemon  launch {argv, executable, python, python_options, python_args, env, cwd,
                            umask, ttys, where: best|home|node, node, memory_mb, queue, job_name,
                            streams_to: "host:port", streams_token: hex}
                    stdin (payload), stdin_eof, signal {sig}
  daemon -> mosrun  started {task, node}, queued {reason}, stdin_ack {n}, notice {text},
                    epoch {epoch, origins}: the task switched to a newer copy (a move or a
                    failover), reattached {task, node, stdin_from}: a restarted daemon has the
                    task again, exit {code, signal}, error {message, code}

The task's stdout, stderr and file requests do not pass through here: the node running it
connects them straight to mosrun.
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
from hmac import compare_digest
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from mosixd.core.gossip import NodeState
from mosixd.core.launchqueue import LaunchQueue
from mosixd.core.policy import JobRequest, NoRoom
from mosixd.home.context import HomeNode, SessionLimits
from mosixd.core.stdinlog import MAX_CHUNK, StdinLog, StdinOverrun
from mosixd.home.inbox import Inbox, Interrupted, SessionGone
from mosixd.home.journal import SavedSession, SessionJournal
from mosixd.home.keeper import CheckpointKeeper
from mosixd.home.livetask import LiveTask, TaskRecord, exchange
from mosixd.home.moves import Mover
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.auth import RefusalLog
from mosrun.runtime import frames, netaddr

log = logging.getLogger("mosixd.home.sessions")

EXIT_LAUNCH = 125   # mosrun could not start the task (documented in the README)
EXIT_LOST = 255     # the node running the task died or became unreachable
QUEUE_RETRY = 1.0
RESEND_CHUNK = 256 * 1024  # stdin resent to a copy that took over, per message
LOST_SHOWN = 3600.0  # mosps shows a task lost to a home restart this long


class LaunchError(Exception):
    """The task cannot be started; the message is for the user, ``code`` mosrun's exit code."""

    def __init__(self, message: str, code: int = EXIT_LAUNCH) -> None:
        super().__init__(message)
        self.code = code


def peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _spec_from_launch(header: dict[str, Any], uid: int, host: str) -> pb.TaskSpec:
    """Validate a launch frame; raises LaunchError naming what is wrong. ``host`` is where
    mosrun was told to take the task's streams: a node connects nowhere else for it."""
    try:
        streams_to = str(header["streams_to"])
        token = bytes.fromhex(str(header["streams_token"]))
        streams_host, port = netaddr.split(streams_to)
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
            streams_to=streams_to, streams_token=token,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LaunchError(f"malformed launch request ({exc!r})") from None
    if len(token) != frames.STREAM_TOKEN_SIZE:
        raise LaunchError("malformed launch request (the streams' token has the wrong size)")
    if not _same_address(streams_host, host):
        raise LaunchError(f"malformed launch request (the task's streams must come to {host}, "
                          f"not {streams_host})")
    if not argv or not os.path.isabs(spec.executable) or not os.path.isabs(spec.cwd):
        raise LaunchError("malformed launch request (empty command or relative paths)")
    try:
        user = pwd.getpwuid(uid)
        spec.user, spec.gid = user.pw_name, user.pw_gid
    except KeyError:
        spec.user, spec.gid = str(uid), uid
    return spec


def _same_address(given: str, expected: str) -> bool:
    """Whether ``given`` (from mosrun) is the address ``expected``, compared as addresses."""
    try:
        return netaddr.canonical(given) == netaddr.canonical(expected)
    except ValueError:
        return False


async def _end_task(call: grpc.aio.StreamStreamCall, reading: asyncio.Future[Any] | None = None,
                    timeout: float = 2.0) -> None:
    """Tell a task's node to end it, and let the message through before the stream goes: a
    stream that merely breaks leaves the task waiting for its home to come back. ``reading``:
    a read of the stream under way (cancelling it would cancel the stream)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await call.write(pb.HomeMessage(end=True))
            await call.done_writing()
            if reading is not None:
                await reading
            while await call.read() is not grpc.aio.EOF:
                pass


async def _close_gently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 5.0) -> None:
    """Half-close, then drain what mosrun still sends until it closes: closing a Unix socket
    with unread data makes the peer's next read fail before it sees our last frame."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            while await reader.read(1 << 16):
                pass
    except (OSError, TimeoutError, RuntimeError):  # RuntimeError: the transport closed under us
        pass
    finally:
        writer.close()


class HomeSessions:
    """The sessions of the tasks whose home is this node."""

    def __init__(self, node: HomeNode) -> None:
        self._node = node
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: dict[asyncio.Task[None], int] = {}  # open sessions -> the peer's uid
        self.records: dict[str, TaskRecord] = {}
        self.live: dict[str, LiveTask] = {}
        self.mover = Mover(node, self.live)
        self.keeper = CheckpointKeeper(node)
        self.queue = LaunchQueue()
        self._refusals = RefusalLog()
        self._queue_moved = asyncio.Event()  # set (and replaced) whenever a task leaves the queue
        self.journal = SessionJournal(node.state_dir / "sessions")
        self.returning: dict[str, SavedSession] = {}  # tasks of an earlier life, until their mosrun is back
        self.detaching = False  # the daemon stops: its tasks wait for the next life, not ended
        self._forgetting: asyncio.Task[None] | None = None

    @property
    def limits(self) -> SessionLimits:
        """The limits this home applies to local users (shared with the tools' socket)."""
        return self._node.limits

    @property
    def refused(self) -> int:
        """Sessions refused at once for a limit (limits.sessions, limits.sessions_per_user)."""
        return self._refusals.count

    def sessions(self) -> int:
        """Sessions with mosrun open now."""
        return len(self._sessions)

    async def start(self, path: Path) -> None:
        for saved in self.journal.load():
            spec = saved.spec
            self.returning[spec.task_id] = saved
            self.records[spec.task_id] = TaskRecord(id=spec.task_id, user=spec.user, command=" ".join(spec.argv),
                                                    started=spec.started, state="returning", where=saved.node_id)
        if self.returning:
            log.info("%d task(s) of an earlier life of this node run on; their mosruns have %g s to come back",
                     len(self.returning), self._node.limits.home_restart)
            self._forgetting = asyncio.create_task(self._forget_returning())
        self.keeper.clean_orphans(keep=set(self.returning))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        os.chmod(path, 0o666)  # any local user may submit; the kernel tells us who they are

    async def stop(self) -> None:
        # The tasks run on elsewhere and their mosruns wait for this daemon to come back.
        self.detaching = True
        if self._forgetting is not None:
            self._forgetting.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.cancel()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=3)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        uid = peer_credentials(writer)[1]
        if refusal := self._node.limits.refusal(self._sessions.values(), uid, "sessions"):
            self._refusals.note(str(uid), "session", refusal)
            with contextlib.suppress(Exception):
                writer.write(frames.encode({"t": "error", "code": EXIT_LAUNCH, "message": refusal}))
                await writer.drain()
            writer.close()  # at once: a flood must not hold the daemon's descriptors
            return
        self._sessions[task] = uid
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
            self._sessions.pop(task, None)
            await _close_gently(reader, writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(header: dict[str, Any]) -> None:
            writer.write(frames.encode(header))
            await writer.drain()

        task_id = f"{self._node.node_id}.{self._node.generation}.{next(self._ids)}"
        try:
            # The advertised name stands for an address of this machine: mosrun listens there.
            host = await asyncio.to_thread(netaddr.own_address, self._node.advertise_host)
        except OSError as exc:
            log.warning("launch of %s refused: this node's address: %s", task_id, exc)
            await send({"t": "error", "code": EXIT_LAUNCH, "message": (
                f"the home node cannot take its task's streams: {exc.strerror or exc}")})
            return
        await send({"t": "hello", "task": task_id, "host": host, "home_restart": self._node.limits.home_restart})
        limit = self._node.limits.launch_timeout
        try:
            frame = await asyncio.wait_for(frames.read_frame(reader, MAX_CHUNK), limit)
        except asyncio.TimeoutError:
            await send({"t": "error", "code": EXIT_LAUNCH, "message": (
                f"no launch request within {limit:g} s (limits.launch_timeout); session closed")})
            return
        if frame is None:
            return
        header, _ = frame
        inbox = Inbox(reader)
        if header["t"] == "reattach":
            try:
                await self._take_back(header, peer_credentials(writer)[1], inbox, send)
            finally:
                inbox.close()
            return
        try:
            if header["t"] != "launch":
                raise LaunchError(f"expected a launch request, got {header['t']!r}")
            spec = _spec_from_launch(header, peer_credentials(writer)[1], host)
            spec.task_id, spec.home = task_id, self._node.node_id
            spec.python_version = self._node.python if spec.python else ""
            record = self.records[task_id] = TaskRecord(
                id=task_id, user=spec.user, command=" ".join(spec.argv), started=spec.started)
            call, node_id = await self._launch(spec, header, record, send, inbox)
            live = self.live[task_id] = LiveTask(spec=spec, record=record, call=call, node_id=node_id)
            await self._run_session(live, inbox, send)
        except LaunchError as exc:
            log.warning("launch of %s refused: %s", task_id, exc)
            await send({"t": "error", "message": str(exc), "code": exc.code})
        except SessionGone:
            log.info("launch of %s: mosrun left while the task waited", task_id)
        finally:
            inbox.close()
            self._unqueue(task_id)
            self.records.pop(task_id, None)
            self.live.pop(task_id, None)

    async def _run_session(self, live: LiveTask, inbox: Inbox, send: Any) -> None:
        """A running task's session: relay until it ends. Its record on disk lets a restarted
        daemon take it back; a task whose mosrun left is ended on its node."""
        spec = live.spec
        storing = asyncio.create_task(self.keeper.store_checkpoints(live, send)) if spec.checkpoint_every else None
        self.journal.save(spec, live.node_id, self._address_of(live.node_id))
        ended = False
        try:
            live.record.state, live.record.where = "running", live.node_id
            ended = await self._relay(live, inbox, send)
        finally:
            if storing is not None:
                storing.cancel()
                await asyncio.gather(storing, return_exceptions=True)
            if not self.detaching or ended:
                self.journal.remove(spec.task_id)
                if spec.checkpoint_every:
                    self.keeper.forget(spec.task_id)
                if not ended:  # mosrun left (or broke the session): the task ends with it
                    await _end_task(live.call, live.reading)
            live.call.cancel()
            if live.switch_to:
                live.switch_to[0].cancel()

    async def _take_back(self, header: dict[str, Any], uid: int, inbox: Inbox, send: Any) -> None:
        """A mosrun whose daemon restarted comes back for its task: it proves it is the same
        mosrun (its user, and the stream token only it and the home knew), and the node running
        the task hands the task's stream over."""
        task_id = str(header.get("task", ""))
        saved = self.returning.get(task_id)
        try:
            token = bytes.fromhex(str(header.get("token", ""))[:128])
        except ValueError:
            token = b""
        if saved is None or saved.spec.uid != uid or not compare_digest(token, saved.spec.streams_token):
            await send({"t": "error", "code": EXIT_LOST, "message": (
                f"task {task_id[:64]} is not a task of this node's earlier life that this mosrun started")})
            return
        del self.returning[task_id]
        spec, node_id = saved.spec, saved.node_id
        record = self.records[task_id]
        call = self._node.task_stream(self._address_of(node_id) or saved.address)
        answer = await exchange(call, pb.HomeMessage(reattach=task_id), "started", 20.0)
        if isinstance(answer, str) or not answer.started.reattached:
            call.cancel()
            self.records.pop(task_id, None)
            self.journal.remove(task_id)
            why = answer if isinstance(answer, str) else "it answered as for a new task"
            log.warning("task %s: could not be taken back from %s: %s", task_id, node_id, why)
            await send({"t": "error", "code": EXIT_LOST, "message": (
                f"the home daemon came back, but task {task_id} could not be taken back from node {node_id} "
                f"({why})")})
            return
        started = answer.started
        spec.epoch = started.epoch or spec.epoch
        live = self.live[task_id] = LiveTask(spec=spec, record=record, call=call, node_id=node_id)
        live.stdin = StdinLog.starting_at(started.stdin_offset)
        live.output_at = self.keeper.load_offsets(task_id)
        live.movable = started.movable
        if live.movable:
            live.became_movable.set()
        log.info("task %s of uid %d taken back: it runs on %s", task_id, uid, node_id)
        await send({"t": "reattached", "task": task_id, "node": node_id, "stdin_from": started.stdin_offset})
        try:
            await self._run_session(live, inbox, send)
        finally:
            self.records.pop(task_id, None)
            self.live.pop(task_id, None)

    def _address_of(self, node_id: str) -> str:
        """The address gossip knows for ``node_id`` ("" if none)."""
        return next((v.address for v in self._node.cluster_view() if v.id == node_id), "")

    async def _forget_returning(self) -> None:
        """After ``limits.home_restart``, the tasks whose mosrun did not come back are ended (a
        mosrun does not outlive a reboot of its machine); mosps shows them as lost for a while."""
        await asyncio.sleep(self._node.limits.home_restart)
        for task_id, saved in list(self.returning.items()):
            del self.returning[task_id]
            self.journal.remove(task_id)
            self.keeper.forget(task_id)
            record = self.records.get(task_id)
            if record is not None:
                record.state = "lost"
            log.warning("task %s of %s: its mosrun did not come back within %g s of this daemon's restart; "
                        "ending it on %s", task_id, saved.spec.user, self._node.limits.home_restart, saved.node_id)
            # The node may have gone meanwhile: then the task went with it.
            call = self._node.task_stream(self._address_of(saved.node_id) or saved.address)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    if not isinstance(await exchange(call, pb.HomeMessage(reattach=task_id), "started", 10.0), str):
                        await _end_task(call)
            call.cancel()
        await asyncio.sleep(LOST_SHOWN)
        for task_id, record in list(self.records.items()):
            if record.state == "lost":
                del self.records[task_id]

    async def _launch(self, spec: pb.TaskSpec, header: dict[str, Any], record: TaskRecord,
                      send: Any, inbox: Inbox) -> tuple[grpc.aio.StreamStreamCall, str]:
        """Place the task and start it; try the next candidate when a node refuses. With
        ``queue``, wait in the home's queue until a node takes it (see ``LaunchQueue``)."""
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        limit = max(0.0, float(header.get("queue_timeout", 0) or 0))
        waited_since = self._node.now()
        why = ""
        while True:
            if spec.task_id in self.queue and self.queue.head() != spec.task_id:
                await self._wait_in_queue(inbox, limit, waited_since, why)  # the head starts first
                continue
            refusals: dict[str, str] = {}
            for node_id, address in self._candidates(header, job, refusals):
                reservation = self._node.placement.reserve(node_id, job, self._node.now())
                call = self._node.task_stream(address)
                try:
                    await call.write(pb.HomeMessage(start=spec))
                    event = await call.read()
                except grpc.aio.AioRpcError as exc:
                    self._node.placement.release(reservation)
                    refusals[node_id] = f"unreachable ({exc.code().name.lower()})"
                    continue
                kind = event.WhichOneof("kind") if event is not grpc.aio.EOF else None
                if kind == "started":
                    self._node.placement.started(reservation, self._node.now())
                    self._unqueue(spec.task_id, started=True)
                    await send({"t": "started", "task": spec.task_id, "node": node_id, "pid": event.started.pid})
                    record.pid = event.started.pid
                    return call, node_id
                self._node.placement.release(reservation)
                call.cancel()
                # A node names itself in its refusal; the list below names it already.
                refusals[node_id] = (event.refused.reason.removeprefix(f"{node_id}: ") if kind == "refused"
                                     else "closed the stream")
                if kind == "refused" and not event.refused.retry:
                    raise LaunchError(event.refused.reason)
            why = "; ".join(f"{n}: {r}" for n, r in refusals.items()) or "no node known"
            if not header.get("queue"):
                raise LaunchError(f"no node can take the task ({why})")
            if spec.task_id not in self.queue:
                self.queue.join(spec.task_id, spec.user)
                record.state = "queued"
                await send({"t": "queued", "reason": why, "position": self.queue.position(spec.task_id)})
            await self._wait_in_queue(inbox, limit, waited_since, why)

    async def _wait_in_queue(self, inbox: Inbox, limit: float, since: float, why: str) -> None:
        """Wait a retry's time, or until the queue moves, reading what mosrun sends meanwhile:
        its end, a Ctrl-C or a time limit passed takes the task out of the queue."""
        if limit and self._node.now() - since >= limit:
            raise LaunchError(f"gave up after {limit:g} s in the queue (no node can take the task: {why})")
        timeout = min(QUEUE_RETRY, limit - (self._node.now() - since)) if limit else QUEUE_RETRY
        try:
            await inbox.wait(max(0.0, timeout), self._queue_moved)
        except Interrupted as exc:
            raise LaunchError(f"left the queue ({exc})", 128 + exc.signum) from None

    def _unqueue(self, task_id: str, started: bool = False) -> None:
        """``task_id`` waits no more: wake the tasks behind it."""
        if task_id in self.queue:
            self.queue.leave(task_id, started)
            moved, self._queue_moved = self._queue_moved, asyncio.Event()
            moved.set()

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
            if view.state in (NodeState.SUSPECT, NodeState.DOWN, NodeState.LEFT):
                refusals[view.id] = view.state.value
                return []
            return [(view.id, view.address)]
        try:
            return [(c.node_id, c.address) for c in self._node.placement.rank(views, job, self._node.now())]
        except NoRoom as exc:
            refusals.update(exc.reasons)
            return []

    async def _relay(self, live: LiveTask, inbox: Inbox, send: Any) -> bool:
        """Carry the task's events to mosrun and mosrun's input to the task; True once the task
        has ended (its status or its loss told), False when mosrun left first."""
        upstream = asyncio.create_task(self._from_mosrun(inbox, live))
        record, spec = live.record, live.spec
        try:
            while True:
                read = asyncio.ensure_future(live.call.read())
                await asyncio.wait({read, upstream}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    live.reading = read  # not cancelled: that would cancel the stream
                    return False  # mosrun left: the task ends with it
                try:
                    event = read.result()
                except grpc.aio.AioRpcError as exc:
                    if live.move_events is not None:
                        live.move_events.put_nowait(None)  # the source is lost mid-move
                    if live.switch_to is not None:
                        await self._switch(live, send)  # the source died after the target took over
                        continue
                    if await self._recover(live, send, "was lost", f"node {record.where} running task "
                                           f"{spec.task_id} was lost ({exc.code().name.lower()})"):
                        continue
                    return True
                if event is grpc.aio.EOF:
                    if live.switch_to is not None:
                        await self._switch(live, send)
                        continue
                    if await self._recover(live, send, "was lost", f"node {record.where} ended task "
                                           f"{spec.task_id} without an exit status"):
                        continue
                    return True
                kind = event.WhichOneof("kind")
                if kind == "stdin_ack":
                    gained = live.stdin.acked(event.stdin_ack)
                    if gained:
                        await send({"t": "stdin_ack", "n": gained})
                elif kind == "usage":
                    record.cpu, record.rss = event.usage.cpu, event.usage.rss
                elif kind == "movable":
                    live.movable = True
                    live.became_movable.set()
                elif kind == "evicted":
                    # The node leaves the cluster and could not move the task: restart it from
                    # its checkpoint at once, or tell the user why it ends.
                    if live.move_events is not None:
                        live.move_events.put_nowait(None)
                    if await self._recover(live, send, "left the cluster", f"node {record.where} left the "
                                           f"cluster; task {spec.task_id} ended there: {event.evicted}"):
                        continue
                    return True
                elif kind in ("checkpoint", "frozen", "sent", "freeze_failed", "written"):
                    if live.move_events is not None:
                        await live.move_events.put(event)
                elif kind == "exited":
                    if live.switch_to is not None:
                        await self._switch(live, send)  # the copy that moved away ended; go on with the new one
                        continue
                    if live.move_events is not None:
                        live.move_events.put_nowait(event)  # a move under way ends with the task
                    await send({"t": "exit", "code": event.exited.code, "signal": event.exited.signal})
                    return True
        finally:
            # Wait for the cancellation: the session then drains mosrun's socket itself, and a
            # stream may have only one reader.
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)

    async def _recover(self, live: LiveTask, send: Any, what: str, why: str) -> bool:
        """The task's copy is gone (``what`` happened to its node): restart it from its newest
        checkpoint if it has one (True), else end the session, telling mosrun ``why`` (False)."""
        if await self.keeper.failover(live, send, what):
            self.journal.save(live.spec, live.node_id, self._address_of(live.node_id))
            await send(self._epoch(live))
            await self._resend_stdin(live, send)
            return True
        await send({"t": "error", "code": EXIT_LOST, "message": why})
        return False

    async def _switch(self, live: LiveTask, send: Any) -> None:
        """After a move, once the old copy has ended: follow the new one, and tell mosrun, which
        shows the rest of the old copy's output and then the new one's."""
        assert live.switch_to is not None
        live.call.cancel()
        live.call, live.node_id, live.spec.epoch = live.switch_to
        live.record.where = live.node_id
        live.switch_to = None
        self.journal.save(live.spec, live.node_id, self._address_of(live.node_id))
        await send(self._epoch(live))
        await self._resend_stdin(live, send)

    @staticmethod
    def _epoch(live: LiveTask) -> dict[str, Any]:
        """Tell mosrun the task runs as a newer copy, and the offsets its output goes on from:
        after a restart from a checkpoint, what it prints again was shown already."""
        message: dict[str, Any] = {"t": "epoch", "epoch": live.spec.epoch}
        if live.output_origin is not None:
            message["origins"] = list(live.output_origin)
            live.output_origin = None
        return message

    @staticmethod
    async def _resend_stdin(live: LiveTask, send: Any) -> None:
        """The copy that took over reads stdin on from the offset its checkpoint gives: send it
        what mosrun sent from there, and the end of stdin if it came."""
        if live.stdin_resume is None:
            return
        async with live.stdin_lock:
            data, lost = live.stdin.resume(live.stdin_resume)
            live.stdin_resume = None
            if lost:
                log.warning("task %s: %d bytes of stdin before its checkpoint's offset are no longer held",
                            live.spec.task_id, lost)
                await send({"t": "notice", "text": (
                    f"task {live.spec.task_id} restarted from a checkpoint older than the stdin its home "
                    f"still holds: {lost} bytes of stdin it had not read by then are skipped")})
            for start in range(0, len(data), RESEND_CHUNK):
                await live.write_stdin(pb.HomeMessage(stdin=data[start:start + RESEND_CHUNK]))
            if live.stdin.eof:
                await live.write_stdin(pb.HomeMessage(stdin_eof=True))

    async def _from_mosrun(self, inbox: Inbox, live: LiveTask) -> None:
        """stdin and signals from the user's side to the task."""
        try:
            while (frame := await inbox.next()) is not None:
                header, payload = frame
                kind = header["t"]
                if kind == "stdin":
                    async with live.stdin_lock:
                        live.stdin.append(payload)
                        await live.write_stdin(pb.HomeMessage(stdin=payload))
                elif kind == "stdin_eof":
                    async with live.stdin_lock:
                        live.stdin.eof = True
                        await live.write_stdin(pb.HomeMessage(stdin_eof=True))
                elif kind == "signal":
                    await live.write(pb.HomeMessage(signal=int(header["sig"])))
        except (frames.ProtocolError, StdinOverrun, ConnectionError, KeyError, ValueError) as exc:
            log.warning("session of a task broke: %s", exc)
        except grpc.aio.AioRpcError:
            # The host side failed; the relay reports it. Keep waiting for mosrun to leave.
            while await inbox.next() is not None:
                pass
        # Returning tells the relay that mosrun is gone (or broke the protocol).
