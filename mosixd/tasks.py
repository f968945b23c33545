"""The task processes this node runs, for whatever home node owns them.

One home->host gRPC stream per task carries the control: the first message starts it, then
stdin, signals and moves flow in, and usage, move events and the exit status flow out. The
task's stdout, stderr and file-proxy channel are not relayed here: before starting the task we
connect each to the user's mosrun on the home node (``mosrun.dataplane``) and hand the sockets
to the task, so its bulk bytes go straight home and TCP does the flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import secrets
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
from mosixd.outpipe import OutputPipe, big_pipe
from mosixd.policy import JobRequest, admit
from mosixd.rebalance import RunningTask
from mosixd.spawner import Spawner, SpawnFailed
from mosixd.wire import mosix_pb2 as pb
from mosrun import dataplane, frames, transfer

log = logging.getLogger("mosixd.tasks")

RUNTIME = Path(mosrun.__file__).resolve().parent / "runtime.py"
CHUNK = 1 << 20
EVENT_QUEUE = 16          # at most this many chunks buffered per task
USAGE_EVERY = 2.0
FIRST_USAGE = 0.5
CONNECT_TIMEOUT = 10.0    # to open the task's streams to its home's mosrun
KILL_GRACE = 2.0
DRAIN_AFTER_EXIT = 5.0    # orphans may hold the output pipes open; don't wait for them forever
WARM_TIMEOUT = 20.0       # a move's target interpreter must be ready by then
RESTORE_TIMEOUT = 30.0    # ... and, once told to start, have the whole checkpoint
MAX_ROOM = 4 << 30        # memory a warm interpreter faults in for the checkpoint, at most


class SpawnError(Exception):
    """The task could not be started here; ``retry`` says another node may do better."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class HostedTask:
    """A task process running on this node; its stdin pipe is ours to write."""

    spec: pb.TaskSpec
    pid: int
    stdin: asyncio.StreamWriter
    exited: asyncio.Future[int]
    scratch: Path
    local: bool
    ctl: socket.socket | None = None         # our end of its control socket (checkpoints)
    outputs: list[OutputPipe] = field(default_factory=list)  # its stdout and stderr, spliced home
    ctl_writer: asyncio.StreamWriter | None = None
    movable: bool = False                    # it called resumable(): it has safe points
    pending_freeze: pb.Freeze | None = None  # a freeze asked for before it was movable
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
                 blocked: Callable[[], bool], max_tasks: int = 0, cpuset: tuple[int, ...] = (),
                 host: str = "127.0.0.1") -> None:
        self.node_id = node_id
        self._host = host.strip("[]")  # where a move's checkpoint stream comes in
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
        try:
            if kind == "reserve":
                found = await self._warm_start(spec, requests, send)
                if found is None:
                    return  # the move was called off before the start
                task = found
            else:
                task = await self._spawn(spec)
        except SpawnError as exc:
            await send(_refused(f"{self.node_id}: {exc}", exc.retry))
            return
        finally:
            self._starting -= 1
        self.tasks[spec.task_id] = task
        log.info("task %s of %s %s: pid %d, %s", spec.task_id, spec.home,
                 "restored" if kind == "reserve" else "started", task.pid, " ".join(spec.argv))
        await self._run(task, requests, send)

    async def _warm_start(self, spec: pb.TaskSpec, requests: AsyncIterator[pb.HomeMessage],
                          send: Callable[[pb.HostEvent], Awaitable[None]]) -> HostedTask | None:
        """A move's target: start the interpreter now, while the task still runs on its source.

        It loads Python, the runtime and the pickler, then waits on a fresh port for the
        frozen source to stream the checkpoint to it (``mosrun.transfer``). The home learns
        the port and token in the reservation; on its start message the task runs from the
        checkpoint. None when the move is called off first (the interpreter is ended).
        """
        token = secrets.token_bytes(transfer.TOKEN_SIZE)
        try:
            listener = socket.create_server((self._host, 0))
        except OSError as exc:
            raise SpawnError(f"cannot listen for the checkpoint on {self._host}: {exc.strerror}") from None
        address = f"{self._host}:{listener.getsockname()[1]}"
        try:
            task = await self._spawn(spec, restore=(listener, token))
        finally:
            listener.close()  # the interpreter holds its own copy
        try:
            said = await _control_word(task, WARM_TIMEOUT)
            if said.get("t") != "ready":
                raise SpawnError(f"the task's interpreter did not start ({said.get('reason', 'it ended')})")
            await send(pb.HostEvent(reserved=pb.Reservation(checkpoint_to=address, token=token)))
            message = await anext(aiter(requests), None)
            if message is None or message.WhichOneof("kind") != "start":
                await self._discard(task)
                return None
            task.spec = message.start
            assert task.ctl is not None
            await asyncio.get_running_loop().sock_sendall(task.ctl, frames.encode({"t": "go"}))
            said = await _control_word(task, RESTORE_TIMEOUT)
            if said.get("t") != "restored":
                raise SpawnError(f"cannot restore the task: {said.get('reason', 'its interpreter ended')}")
            return task
        except BaseException:
            # Shielded, as in _run: a second cancellation must not leave the interpreter running.
            await asyncio.shield(self._discard(task))
            raise

    async def _discard(self, task: HostedTask) -> None:
        """End a task that never ran for its home (a move's target whose move failed)."""
        await self._cleanup(task)
        if task.ctl is not None:
            task.ctl.close()

    async def _run(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                   send: Callable[[pb.HostEvent], Awaitable[None]]) -> None:
        events = task.events
        handler = asyncio.current_task()
        assert handler is not None
        helpers = [asyncio.create_task(self._feed(task, requests, handler)),
                   asyncio.create_task(self._usage(task, events))]
        if task.ctl is not None:
            ctl_reader, task.ctl_writer = await asyncio.open_unix_connection(sock=task.ctl)
            helpers.append(asyncio.create_task(self._control_events(task, ctl_reader, events)))
        waiter = asyncio.create_task(self._wait_exit(task, events))
        try:
            await send(pb.HostEvent(started=pb.TaskStarted(node_id=self.node_id, pid=task.pid)))
            while (event := await events.get()) is not None:
                await send(event)
        finally:
            for job in (*helpers, waiter):
                job.cancel()
            # Shielded: a second cancellation (gRPC's and the feeder's may both come) must not
            # cut the cleanup short and leave the task running.
            cleanup = asyncio.ensure_future(self._cleanup(task))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    async def _cleanup(self, task: HostedTask) -> None:
        self.tasks.pop(task.spec.task_id, None)
        if not task.exited.done():
            await self._kill(task)
        task.stdin.close()
        for output in task.outputs:
            output.close()
        if task.ctl_writer is not None:
            task.ctl_writer.close()
        shutil.rmtree(task.scratch, ignore_errors=True)

    async def _control_events(self, task: HostedTask, reader: asyncio.StreamReader,
                              events: asyncio.Queue[pb.HostEvent | None]) -> None:
        """What the task's runtime says about moving: movable, a checkpoint, or why not."""
        try:
            while (frame := await frames.read_frame(reader)) is not None:
                header = frame[0]
                if header["t"] == "movable":
                    task.movable = True
                    await events.put(pb.HostEvent(movable=True))
                    if task.pending_freeze is not None and task.ctl_writer is not None:
                        task.ctl_writer.write(_freeze_frame(task.pending_freeze))
                        task.pending_freeze = None
                        await task.ctl_writer.drain()
                elif header["t"] == "sent":  # a move's checkpoint, streamed straight to the target
                    log.info("task %s: checkpoint of %d bytes handed over in %.3f s", task.spec.task_id,
                             int(header["size"]), float(header.get("seconds", 0.0)))
                    await events.put(pb.HostEvent(sent=pb.Handover(size=int(header["size"]),
                                                                   seconds=float(header.get("seconds", 0.0)))))
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
                    handler: asyncio.Task[object]) -> None:
        try:
            await self._feed_messages(task, requests)
        except Exception as exc:  # grpc reports a cancelled call this way
            log.debug("task %s: home stream failed: %r", task.spec.task_id, exc)
        # The home never half-closes a task's stream: its end means the home is gone, and the
        # task must end with it (the handler's cleanup kills it).
        handler.cancel()

    async def _feed_messages(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage]) -> None:
        # stdin goes through its own writer: signals and moves must get through even while
        # the task's stdin pipe is full. The home keeps at most a window of unacknowledged
        # stdin in flight, so this queue stays small.
        stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write_stdin(task, stdin))
        try:
            await self._dispatch(task, requests, stdin)
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
                        stdin: asyncio.Queue[bytes | None]) -> None:
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
                    log.info("task %s: checkpoint %d asked%s", task.spec.task_id, message.freeze.id,
                             f" for a move to {message.freeze.send_to}" if message.freeze.send_to else "")
                    if task.ctl is None:
                        await task.events.put(pb.HostEvent(
                            freeze_failed="the task has no safe points (it is not a Python task)"))
                    elif not task.movable or task.ctl_writer is None:
                        # A restored copy announces itself once it reaches resumable(): hold the
                        # request until then (the move's freeze deadline bounds the wait).
                        task.pending_freeze = message.freeze
                    else:
                        task.ctl_writer.write(_freeze_frame(message.freeze))
                        await task.ctl_writer.drain()
                elif kind == "verdict" and task.ctl_writer is not None:
                    word = "exit" if message.verdict.exit else "resume"
                    task.ctl_writer.write(frames.encode({"t": word, "id": message.verdict.freeze}))
                    await task.ctl_writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the task closed its end, as a local process may

    async def _usage(self, task: HostedTask, events: asyncio.Queue[pb.HostEvent | None]) -> None:
        try:
            proc = psutil.Process(task.pid)
        except psutil.Error:
            return
        delay = FIRST_USAGE  # soon after the start, so a move knows early how big the task is
        while True:
            await asyncio.sleep(delay)
            delay = USAGE_EVERY
            try:
                with proc.oneshot():
                    times, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                return
            task.cpu, task.rss = times.user + times.system, rss
            await events.put(pb.HostEvent(usage=pb.TaskUsage(cpu=task.cpu, rss=rss)))

    async def _wait_exit(self, task: HostedTask, events: asyncio.Queue[pb.HostEvent | None]) -> None:
        # The task's output and file requests go home on their own streams, and mosrun reads
        # them to their end before it takes this status; hand over the output first.
        code = await asyncio.shield(task.exited)  # cancelling this waiter must not cancel the exit
        await asyncio.gather(*(output.drained(DRAIN_AFTER_EXIT) for output in task.outputs))
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

    async def _spawn(self, spec: pb.TaskSpec, restore: tuple[socket.socket, bytes] | None = None) -> HostedTask:
        if not os.access(spec.executable, os.X_OK):
            raise SpawnError(f"{spec.executable} does not exist here or is not executable")
        identity = self._identity(spec)
        streams = await _open_streams(spec)
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
        stdin_r, stdin_w = big_pipe()
        # stdout and stderr are pipes, as in a local run, spliced into their streams home; the
        # file channel is its stream home itself: we keep no end of it.
        outputs = [OutputPipe(streams[0]), OutputPipe(streams[1])]
        child_fds = [stdin_r, outputs[0].child_end, outputs[1].child_end]
        ctl = None
        if spec.python:
            ctl, ctl_end = socket.socketpair()
            child_fds += [streams[2].detach(), ctl_end.detach()]
            if restore is not None:
                # A move's target: the socket the checkpoint will arrive on, and its token.
                child_fds.append(os.dup(restore[0].fileno()))
                env["MOSIX_RESTORE_TOKEN"] = restore[1].hex()
                room = min(spec.incoming_bytes, MAX_ROOM, psutil.virtual_memory().available // 2)
                env["MOSIX_RESTORE_ROOM"] = str(room)
        try:
            pid = await self._spawner.spawn(args=args, executable=spec.executable, cwd=str(cwd), env=env,
                                            umask=spec.umask, identity=identity, fds=child_fds,
                                            fd_env=("MOSIX_RUNTIME_FD", "MOSIX_CONTROL_FD", "MOSIX_RESTORE_FD"),
                                            cpuset=self._cpuset)
        except SpawnFailed as exc:
            os.close(stdin_w)
            for output in outputs:
                output.close()
            if ctl is not None:
                ctl.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise SpawnError(f"cannot start {spec.executable}: {exc.strerror}") from None
        finally:
            for fd in child_fds:
                os.close(fd)
        for output in outputs:
            output.start()
        stdin = await _stdin_writer(stdin_w)
        return HostedTask(spec=spec, pid=pid, stdin=stdin, exited=self._spawner.exit_status(pid), scratch=scratch,
                          local=spec.home == self.node_id, ctl=ctl, outputs=outputs)

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


def _freeze_frame(freeze: pb.Freeze) -> bytes:
    """The control frame asking a runtime for a checkpoint: home, or straight to a target."""
    header: dict[str, object] = {"t": "freeze", "id": freeze.id}
    if freeze.send_to:
        header.update(to=freeze.send_to, token=freeze.token.hex())
    return frames.encode(header)


async def _control_word(task: HostedTask, timeout: float) -> dict[str, object]:
    """The next frame on a starting task's control socket, read exactly (the rest of the
    stream is the control reader's); {"t": "ended"} if it closed, or timed out."""
    assert task.ctl is not None
    loop = asyncio.get_running_loop()
    task.ctl.setblocking(False)

    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(task.ctl, n - len(data))  # type: ignore[arg-type]
            if not chunk:
                raise ConnectionResetError
            data += chunk
        return data

    try:
        async with asyncio.timeout(timeout):
            head_len, payload_len = frames.check_sizes(await exactly(frames.PREFIX.size))
            rest = await exactly(head_len + payload_len)
        return frames.decode_header(rest[:head_len])
    except (TimeoutError, ConnectionError, frames.ProtocolError) as exc:
        return {"t": "ended", "reason": "no answer" if isinstance(exc, TimeoutError) else "it ended"}


async def _stdin_writer(stdin_fd: int) -> asyncio.StreamWriter:
    """Our end of the child's stdin pipe as an asyncio stream (writes honour flow control)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(stdin_fd, "wb", buffering=0))
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _open_streams(spec: pb.TaskSpec) -> list[socket.socket]:
    """Connect the task's stdout, stderr and (a Python task's) file channel to the user's
    mosrun at home, all at once; raises SpawnError naming the home endpoint."""
    if not spec.streams_to or len(spec.streams_token) != dataplane.TOKEN_SIZE:
        raise SpawnError("the start names no home endpoint for the task's output", retry=False)
    kinds = ("stdout", "stderr", "files") if spec.python else ("stdout", "stderr")
    results = await asyncio.gather(*(_connect_stream(spec, kind) for kind in kinds), return_exceptions=True)
    streams = [r for r in results if isinstance(r, socket.socket)]
    failure = next((r for r in results if not isinstance(r, socket.socket)), None)
    if failure is None:
        return streams
    for sock in streams:
        sock.close()
    if not isinstance(failure, (OSError, TimeoutError)):
        raise failure
    why = (f"no answer in {CONNECT_TIMEOUT:g} s" if isinstance(failure, TimeoutError)
           else failure.strerror or str(failure))
    log.warning("task %s: cannot open its streams to %s: %s", spec.task_id, spec.streams_to, why)
    raise SpawnError(f"cannot open the task's streams to its home at {spec.streams_to} ({why})")


async def _connect_stream(spec: pb.TaskSpec, kind: str) -> socket.socket:
    """One stream: connect, greet with the token, take mosrun's answer. Blocking afterwards,
    as the task expects of its fds."""
    loop = asyncio.get_running_loop()
    host, _, port = spec.streams_to.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await loop.sock_connect(sock, (host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # lines and requests go at once
            await loop.sock_sendall(sock, dataplane.greeting(spec.task_id, spec.epoch, kind, spec.streams_token))
            answer = await loop.sock_recv(sock, len(dataplane.ACK))
        if answer != dataplane.ACK:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"mosrun refused the task's {kind} stream")
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise
