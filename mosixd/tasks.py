"""The task processes this node runs, for whatever home node owns them.

One home->host gRPC stream per task: the first message starts it, then stdin, signals and
proxy replies flow in, and stdout, stderr, proxy requests, usage and the exit status flow out.
Every pump goes through a small bounded queue, so a task that prints gigabytes is slowed to
the pace of its home's terminal instead of filling this daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import psutil

import mosrun
from mosixd.loadvector import LoadVector
from mosixd.policy import JobRequest, admit
from mosixd.rebalance import RunningTask
from mosixd.spawner import Spawner, SpawnFailed
from mosixd.wire import mosix_pb2 as pb
from mosrun import frames

log = logging.getLogger("mosixd.tasks")

RUNTIME = Path(mosrun.__file__).resolve().parent / "runtime.py"
CHUNK = 1 << 20
PIPE_SIZE = 1 << 20       # bigger pipes: fewer, larger chunks on the way home
EVENT_QUEUE = 16          # at most this many chunks buffered per task
PROXY_BACKLOG = 32 << 20  # file proxy replies held for a runtime: more than it ever awaits
USAGE_EVERY = 2.0
DRAIN_AFTER_EXIT = 5.0    # orphans may hold the pipes open; don't wait for them forever
KILL_GRACE = 2.0


class SpawnError(Exception):
    """The task could not be started here; ``retry`` says another node may do better."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class HostedTask:
    """A task process running on this node, with its pipes as asyncio streams."""

    spec: pb.TaskSpec
    pid: int
    stdin: asyncio.StreamWriter
    stdout: int                              # our non-blocking read ends of the task's pipes
    stderr: int
    exited: asyncio.Future[int]
    scratch: Path
    local: bool
    control: socket.socket | None = None     # our end of the runtime's socket (Python tasks)
    ctl: socket.socket | None = None         # our end of its control socket (checkpoints)
    ctl_writer: asyncio.StreamWriter | None = None
    movable: bool = False                    # it called resumable(): it has safe points
    pending_freeze: int = 0                  # a freeze asked for before it was movable
    restore: Path | None = None              # the checkpoint it was started from
    events: asyncio.Queue[pb.HostEvent | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EVENT_QUEUE))  # what goes home
    started: float = field(default_factory=time.time)
    arrived: float = field(default_factory=time.monotonic)   # for minimum residency
    cpu: float = 0.0
    rss: int = 0

    def signal(self, signum: int) -> None:
        # The task leads its own process group: a signal reaches its helpers too, as in a terminal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


def _refused(reason: str, retry: bool) -> pb.HostEvent:
    return pb.HostEvent(refused=pb.Refusal(reason=reason, retry=retry))


class TaskTable:
    """Starts, tracks and accounts the tasks of this node."""

    def __init__(self, node_id: str, state_dir: Path, spawner: Spawner, *, own_load: Callable[[], LoadVector],
                 blocked: Callable[[], bool], max_tasks: int = 0, cpuset: tuple[int, ...] = ()) -> None:
        self.node_id = node_id
        self._cpuset = cpuset
        self._spawner = spawner
        self._scratch_root = state_dir / "tasks"
        self._own_load = own_load
        self._blocked = blocked
        self._max_tasks = max_tasks
        self.tasks: dict[str, HostedTask] = {}
        self._starting = 0
        self._cleanups: set[asyncio.Future[None]] = set()

    # ---- accounting (load sampler, gossip, mosps) ------------------------------------

    def pids(self) -> list[int]:
        return [t.pid for t in self.tasks.values()]

    def running(self, now: float) -> list[RunningTask]:
        """The tasks this node runs, as the rebalancer sees them (``now`` on the node's clock)."""
        wall = time.time()
        return [RunningTask(task_id=t.spec.task_id, memory_mb=t.rss >> 20, age=max(0.0, wall - t.spec.started),
                            state_bytes=t.rss, resident_since=t.arrived, locked=t.spec.locked,
                            migratable=t.movable)
                for t in self.tasks.values()]

    def counts(self) -> tuple[int, int]:
        """(local, guest) tasks running here, plus starts in progress counted as guests."""
        local = sum(1 for t in self.tasks.values() if t.local)
        return local, len(self.tasks) - local + self._starting

    # ---- one task's life ------------------------------------------------------------

    async def execute(self, requests: AsyncIterator[pb.HomeMessage],
                      send: Callable[[pb.HostEvent], Awaitable[None]]) -> None:
        """Run the task described by the first message and send its events until it exits.

        A coroutine, not an async generator: when the home cancels the stream, the cancellation
        lands on whatever this awaits, so the cleanup that ends the task runs at once.
        """
        first = await anext(aiter(requests), None)
        kind = first.WhichOneof("kind") if first is not None else None
        if kind not in ("start", "reserve"):
            await send(_refused("the first message on a task stream must start or reserve a task", retry=False))
            return
        spec = first.start if kind == "start" else first.reserve
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        reason = admit(self._own_load(), job, blocked=self._blocked(), starting=self._starting,
                       max_tasks=self._max_tasks)
        if reason:
            await send(_refused(f"{self.node_id}: {reason}", retry=True))
            return
        self._starting += 1
        restore: Path | None = None
        try:
            if kind == "reserve":
                # A move: hold the room, take the checkpoint, then start from it.
                await send(pb.HostEvent(reserved=True))
                restore = self._scratch_root / f"{spec.task_id}.incoming"
                spec = await self._receive_checkpoint(requests, restore)
                if spec is None:
                    return  # the move was called off before the start
            task = await self._spawn(spec, restore)
        except SpawnError as exc:
            await send(_refused(f"{self.node_id}: {exc}", exc.retry))
            return
        finally:
            self._starting -= 1
            if restore is not None and (spec is None or not spec.restore):
                restore.unlink(missing_ok=True)
        self.tasks[spec.task_id] = task
        log.info("task %s of %s %s: pid %d, %s", spec.task_id, spec.home,
                 "restored" if restore else "started", task.pid, " ".join(spec.argv))
        await self._run(task, requests, send)

    async def _receive_checkpoint(self, requests: AsyncIterator[pb.HomeMessage], path: Path) -> pb.TaskSpec | None:
        """Write the checkpoint chunks of a move to ``path`` until the start message comes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            async for message in requests:
                kind = message.WhichOneof("kind")
                if kind == "checkpoint":
                    out.write(message.checkpoint)
                elif kind == "start":
                    out.flush()
                    os.fsync(out.fileno())
                    spec = message.start
                    spec.restore = True
                    return spec
        path.unlink(missing_ok=True)
        return None

    async def _run(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                   send: Callable[[pb.HostEvent], Awaitable[None]]) -> None:
        events = task.events
        control = task.control
        reader, writer = (await asyncio.open_unix_connection(sock=control)) if control else (None, None)
        if writer is not None:
            # A runtime reads ahead and reads the replies when it needs them: until then they
            # wait here, and waiting for it to drain them must not hold up stdin and signals.
            # It keeps less than this outstanding (mosrun.proxyfs.WINDOW), so this is a bound.
            writer.transport.set_write_buffer_limits(high=PROXY_BACKLOG)
        pipes = [asyncio.create_task(self._pump(task.stdout, "stdout", events)),
                 asyncio.create_task(self._pump(task.stderr, "stderr", events))]
        handler = asyncio.current_task()
        assert handler is not None
        helpers = [asyncio.create_task(self._feed(task, requests, writer, handler)),
                   asyncio.create_task(self._usage(task, events))]
        if reader is not None:
            # Its requests, like its output, reach home before its exit status: a write the
            # task did not wait for is done even if it then died.
            pipes.append(asyncio.create_task(self._proxy_requests(task, reader, events)))
        if task.ctl is not None:
            ctl_reader, task.ctl_writer = await asyncio.open_unix_connection(sock=task.ctl)
            helpers.append(asyncio.create_task(self._control_events(task, ctl_reader, events)))
        waiter = asyncio.create_task(self._wait_exit(task, pipes, events))
        try:
            await send(pb.HostEvent(started=pb.TaskStarted(node_id=self.node_id, pid=task.pid)))
            while (event := await events.get()) is not None:
                await send(event)
        finally:
            for job in (*pipes, *helpers, waiter):
                job.cancel()
            # Shielded: a second cancellation (gRPC's and the feeder's may both come) must not
            # cut the cleanup short and leave the task running.
            cleanup = asyncio.ensure_future(self._cleanup(task, writer))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    async def _cleanup(self, task: HostedTask, writer: asyncio.StreamWriter | None) -> None:
        self.tasks.pop(task.spec.task_id, None)
        if not task.exited.done():
            await self._kill(task)
        task.stdin.close()
        for stream in (writer, task.ctl_writer):
            if stream is not None:
                stream.close()
        if task.restore is not None:
            task.restore.unlink(missing_ok=True)
        shutil.rmtree(task.scratch, ignore_errors=True)

    async def _pump(self, fd: int, kind: str, events: asyncio.Queue[pb.HostEvent | None]) -> None:
        """Forward a pipe of the task; read directly (one copy), not through a StreamReader."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    readable = loop.create_future()
                    loop.add_reader(fd, readable.set_result, None)
                    try:
                        await readable
                    finally:
                        loop.remove_reader(fd)
                    continue
                if not chunk:
                    return
                await events.put(pb.HostEvent(**{kind: chunk}))
        finally:
            os.close(fd)

    async def _proxy_requests(self, task: HostedTask, reader: asyncio.StreamReader,
                              events: asyncio.Queue[pb.HostEvent | None]) -> None:
        try:
            while True:
                try:
                    prefix = await reader.readexactly(frames.PREFIX.size)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise frames.ProtocolError("stream ended inside a frame") from None
                    return
                head_len, payload_len = frames.check_sizes(prefix)
                rest = await reader.readexactly(head_len + payload_len)
                frames.decode_header(rest[:head_len])  # checked, then relayed as it came
                await events.put(pb.HostEvent(proxy=prefix + rest))
        except (frames.ProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("task %s: broken runtime channel (%s)", task.spec.task_id, exc)

    async def _control_events(self, task: HostedTask, reader: asyncio.StreamReader,
                              events: asyncio.Queue[pb.HostEvent | None]) -> None:
        """What the task's runtime says about moving: movable, a checkpoint, or why not."""
        try:
            while (frame := await frames.read_frame(reader)) is not None:
                header = frame[0]
                if header["t"] == "movable":
                    task.movable = True
                    await events.put(pb.HostEvent(movable=True))
                    if task.pending_freeze and task.ctl_writer is not None:
                        task.ctl_writer.write(frames.encode({"t": "freeze", "id": task.pending_freeze}))
                        task.pending_freeze = 0
                        await task.ctl_writer.drain()
                elif header["t"] == "freeze_failed":
                    await events.put(pb.HostEvent(freeze_failed=str(header.get("reason", "unknown"))))
                elif header["t"] == "checkpoint":
                    size = left = int(header["size"])
                    while left:
                        chunk = await reader.readexactly(min(left, CHUNK))
                        left -= len(chunk)
                        await events.put(pb.HostEvent(checkpoint=chunk))
                    await events.put(pb.HostEvent(frozen=size))
        except (frames.ProtocolError, ConnectionError, asyncio.IncompleteReadError, KeyError, ValueError) as exc:
            log.warning("task %s: broken control channel (%s)", task.spec.task_id, exc)

    async def _feed(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                    control: asyncio.StreamWriter | None, handler: asyncio.Task[object]) -> None:
        try:
            await self._feed_messages(task, requests, control)
        except Exception as exc:  # grpc reports a cancelled call this way
            log.debug("task %s: home stream failed: %r", task.spec.task_id, exc)
        # The home never half-closes a task's stream: its end means the home is gone, and the
        # task must end with it (the handler's cleanup kills it).
        handler.cancel()

    async def _feed_messages(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                             control: asyncio.StreamWriter | None) -> None:
        # stdin goes through its own writer: a task that waits for a proxy reply before it
        # reads stdin must get that reply even while its stdin pipe is full. The home keeps at
        # most a window of unacknowledged stdin in flight, so this queue stays small.
        stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write_stdin(task, stdin))
        try:
            await self._dispatch(task, requests, control, stdin)
        finally:
            writer.cancel()

    async def _write_stdin(self, task: HostedTask, chunks: asyncio.Queue[bytes | None]) -> None:
        while (chunk := await chunks.get()) is not None:
            try:
                task.stdin.write(chunk)
                await task.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the task closed its stdin, as a local process may; keep acknowledging
            await task.events.put(pb.HostEvent(stdin_ack=len(chunk)))
        task.stdin.close()

    async def _dispatch(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                        control: asyncio.StreamWriter | None, stdin: asyncio.Queue[bytes | None]) -> None:
        async for message in requests:
            kind = message.WhichOneof("kind")
            try:
                if kind == "stdin":
                    stdin.put_nowait(message.stdin)
                elif kind == "stdin_eof":
                    stdin.put_nowait(None)
                elif kind == "signal":
                    task.signal(message.signal)
                elif kind == "freeze":
                    if task.ctl_writer is None:
                        await task.events.put(pb.HostEvent(
                            freeze_failed="the task has no safe points (it is not a Python task)"))
                    elif not task.movable:
                        # A restored copy announces itself once it reaches resumable(): hold the
                        # request until then (the move's freeze deadline bounds the wait).
                        task.pending_freeze = message.freeze
                    else:
                        task.ctl_writer.write(frames.encode({"t": "freeze", "id": message.freeze}))
                        await task.ctl_writer.drain()
                elif kind == "verdict" and task.ctl_writer is not None:
                    word = "exit" if message.verdict.exit else "resume"
                    task.ctl_writer.write(frames.encode({"t": word, "id": message.verdict.freeze}))
                    await task.ctl_writer.drain()
                elif kind == "proxy" and control is not None:
                    control.write(message.proxy)
                    await control.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the task closed its end, as a local process may

    async def _usage(self, task: HostedTask, events: asyncio.Queue[pb.HostEvent | None]) -> None:
        try:
            proc = psutil.Process(task.pid)
        except psutil.Error:
            return
        while True:
            await asyncio.sleep(USAGE_EVERY)
            try:
                with proc.oneshot():
                    times, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                return
            task.cpu, task.rss = times.user + times.system, rss
            await events.put(pb.HostEvent(usage=pb.TaskUsage(cpu=task.cpu, rss=rss)))

    async def _wait_exit(self, task: HostedTask, pipes: list[asyncio.Task[None]],
                         events: asyncio.Queue[pb.HostEvent | None]) -> None:
        code = await asyncio.shield(task.exited)  # cancelling this waiter must not cancel the exit
        # All output must reach home before the exit status does.
        await asyncio.wait(pipes, timeout=DRAIN_AFTER_EXIT)
        exited = pb.TaskExit(code=code) if code >= 0 else pb.TaskExit(signal=-code)
        log.info("task %s exited: %s", task.spec.task_id, f"code {code}" if code >= 0 else f"signal {-code}")
        await events.put(pb.HostEvent(exited=exited))
        await events.put(None)

    async def _kill(self, task: HostedTask) -> None:
        """End a task whose home went away: SIGTERM, then SIGKILL after a grace period."""
        log.info("task %s: home session gone, ending it", task.spec.task_id)
        task.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(task.exited), KILL_GRACE)
        except asyncio.TimeoutError:
            task.signal(signal.SIGKILL)
            await task.exited

    async def _spawn(self, spec: pb.TaskSpec, restore: Path | None = None) -> HostedTask:
        if not os.access(spec.executable, os.X_OK):
            raise SpawnError(f"{spec.executable} does not exist here or is not executable")
        identity = self._identity(spec)
        scratch = self._scratch_root / spec.task_id
        scratch.mkdir(parents=True, exist_ok=True)
        if identity:
            os.chown(scratch, identity["user"], identity["group"])
        env = dict(spec.env)
        env.update(MOSIX_TASK_ID=spec.task_id, MOSIX_HOME_NODE=spec.home, MOSIX_NODE=self.node_id)
        if spec.python:
            env.update(MOSIX_HOME_CWD=spec.cwd, MOSIX_PROGRAM=spec.argv[0], MOSIX_EPOCH=str(spec.epoch),
                       MOSIX_STDOUT_TTY="1" if spec.stdout_tty else "", MOSIX_STDERR_TTY="1" if spec.stderr_tty else "")
            args = [spec.executable, *spec.python_options, str(RUNTIME), *spec.python_args]
            cwd = scratch  # the runtime makes relative paths act at home
        else:
            args = list(spec.argv)
            cwd = Path(spec.cwd) if os.path.isdir(spec.cwd) else scratch
        stdin_r, stdin_w = _pipe()
        stdout_r, stdout_w = _pipe()
        stderr_r, stderr_w = _pipe()
        child_fds, ours = [stdin_r, stdout_w, stderr_w], [stdin_w, stdout_r, stderr_r]
        control = ctl = None
        if spec.python:
            control, runtime_end = socket.socketpair()
            ctl, ctl_end = socket.socketpair()
            child_fds += [runtime_end.detach(), ctl_end.detach()]
            if restore is not None:
                # An open fd, not a path: the runtime's file proxy must never mistake the
                # checkpoint for a file of the home node's.
                child_fds.append(os.open(restore, os.O_RDONLY))
        try:
            pid = await self._spawner.spawn(args=args, executable=spec.executable, cwd=str(cwd), env=env,
                                            umask=spec.umask, identity=identity, fds=child_fds,
                                            fd_env=("MOSIX_RUNTIME_FD", "MOSIX_CONTROL_FD", "MOSIX_RESTORE_FD"),
                                            cpuset=self._cpuset)
        except SpawnFailed as exc:
            for fd in ours:
                os.close(fd)
            for sock in (control, ctl):
                if sock:
                    sock.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise SpawnError(f"cannot start {spec.executable}: {exc.strerror}") from None
        finally:
            for fd in child_fds:
                os.close(fd)
        stdin, stdout, stderr = await _streams(*ours)
        return HostedTask(spec=spec, pid=pid, stdin=stdin, stdout=stdout, stderr=stderr,
                          exited=self._spawner.exit_status(pid), scratch=scratch, local=spec.home == self.node_id,
                          control=control, ctl=ctl, restore=restore)

    def _identity(self, spec: pb.TaskSpec) -> dict[str, object]:
        """Run the task as its user: switch to them when root, else only run our own user's tasks."""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(spec.user)
            except KeyError:
                raise SpawnError(f"user {spec.user} does not exist here") from None
            return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(spec.user, pw.pw_gid)}
        if spec.uid != os.geteuid():
            raise SpawnError(f"this daemon runs as uid {os.geteuid()} and cannot run tasks of {spec.user}")
        return {}


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):  # Linux only; the default still works
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


async def _streams(stdin_fd: int, stdout_fd: int, stderr_fd: int) -> tuple[asyncio.StreamWriter, int, int]:
    """Our ends of the child's pipes: stdin as an asyncio stream (writes honour flow control),
    stdout and stderr as non-blocking fds for the pumps."""
    loop = asyncio.get_running_loop()
    for fd in (stdout_fd, stderr_fd):
        os.set_blocking(fd, False)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(stdin_fd, "wb", buffering=0))
    return asyncio.StreamWriter(transport, protocol, None, loop), stdout_fd, stderr_fd
