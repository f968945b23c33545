"""The task processes this node runs, for whatever home node owns them.

One home->host gRPC stream per task carries the control: the first message starts it, then
stdin, signals and moves flow in, and usage, move events and the exit status flow out. The
task's stdout, stderr and file-proxy channel are not relayed here: before starting the task we
connect each to the user's mosrun on the home node (``mosrun.commands.dataplane``) and hand the sockets
to the task, so its bulk bytes go straight home and TCP does the flow control.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import psutil

from mosixd.core.loadvector import LoadVector
from mosixd.core.policy import JobRequest, admit
from mosixd.core.rebalance import RunningTask
from mosixd.core.stdinlog import KEEP_BEHIND, MAX_STDIN_AHEAD, StdinOverrun, StdinWindow
from mosixd.host.control import ask_freeze, control_events, control_word, give_verdict
from mosixd.host.hosted import Attachment, HostedTask, SpawnError
from mosixd.host.outpipe import OutputPipe, big_pipe
from mosixd.host.spawner import Spawner, SpawnFailed
from mosixd.host.streams import open_streams, stdin_writer
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.names import task_id_problem
from mosrun.runtime import frames, launch, netaddr, transfer

log = logging.getLogger("mosixd.host.tasks")

RUNTIME = Path(launch.__file__).resolve()  # started by path: see mosrun.runtime.launch
USAGE_EVERY = 2.0
FIRST_USAGE = 0.5
KILL_GRACE = 2.0
DRAIN_AFTER_EXIT = 5.0    # orphans may hold the output pipes open; don't wait for them forever
WARM_TIMEOUT = 20.0       # a move's target interpreter must be ready by then
RESTORE_TIMEOUT = 30.0    # ... and, once told to start, have the whole checkpoint
MAX_ROOM = 4 << 30        # memory a warm interpreter faults in for the checkpoint, at most


def _set_origins(task: HostedTask) -> None:
    """A restored copy's stdin and output go on from the offsets its home gives (see
    OutputPipe.written)."""
    task.stdin_written = task.spec.stdin_origin
    if len(task.outputs) == 2:
        task.outputs[0].origin, task.outputs[1].origin = task.spec.stdout_origin, task.spec.stderr_origin


def _refused(reason: str, retry: bool) -> pb.HostEvent:
    return pb.HostEvent(refused=pb.Refusal(reason=reason, retry=retry))


@dataclass(frozen=True, slots=True)
class GuestRules:
    """Whose tasks this node runs (config ``[security]``)."""

    run_as_root: bool = False
    deny_users: tuple[str, ...] = ()
    homes: tuple[str, ...] = ()  # node ids that may start tasks here; () = any
    guest_tasks: int = 0         # tasks of other homes at once; 0 = no limit
    tasks_per_user: int = 0      # tasks of one user at once; 0 = no limit

    def refusal(self, spec: pb.TaskSpec, own_id: str, hosted: list[pb.TaskSpec], starting: int) -> str | None:
        """Why ``spec`` may not start here on these rules alone, or None. ``hosted``: the
        specs of the tasks running here; ``starting``: more being started."""
        guest = spec.home != own_id
        if self.homes and guest and spec.home not in self.homes:
            return f"node {spec.home[:64]} may not start tasks here (security.homes)"
        if spec.user in self.deny_users:
            return f"tasks of {spec.user} are not run here (security.deny_users)"
        guests = sum(1 for h in hosted if h.home != own_id) + starting
        if guest and self.guest_tasks and guests >= self.guest_tasks:
            return f"node runs {guests} guest tasks, its limit (limits.guest_tasks)"
        mine = sum(1 for h in hosted if h.user == spec.user)
        if self.tasks_per_user and mine >= self.tasks_per_user:
            return f"{spec.user} has {mine} tasks here, the limit per user (limits.tasks_per_user)"
        return None


class TaskTable:
    """Starts, tracks and accounts the tasks of this node."""

    def __init__(self, node_id: str, state_dir: Path, spawner: Spawner, *, own_load: Callable[[], LoadVector],
                 blocked: Callable[[], bool], max_tasks: int = 0, cpuset: tuple[int, ...] = (),
                 rules: GuestRules = GuestRules(),
                 host: str = "127.0.0.1", home_grace: float = 60.0) -> None:
        self.node_id = node_id
        self._host = host  # this node's advertised name or address: a move's checkpoint comes in there
        self._cpuset = cpuset
        self._spawner = spawner
        self._scratch_root = state_dir / "tasks"
        self._own_load = own_load
        self._blocked = blocked
        self._max_tasks = max_tasks
        self._rules = rules
        self.refusals: collections.Counter[str] = collections.Counter()  # tasks refused, by reason
        self.tasks: dict[str, HostedTask] = {}
        self.leaving = False  # the node is leaving the cluster: it takes no task any more
        self._starting = 0
        self._cleanups: set[asyncio.Future[None]] = set()
        self._runners: set[asyncio.Future[None]] = set()
        self.home_grace = home_grace

    async def stop(self) -> None:
        """The node stops: end the tasks still here (a graceful leave moved what it could)."""
        for runner in list(self._runners):
            runner.cancel()
        if self._runners:
            await asyncio.wait(self._runners, timeout=KILL_GRACE + 1.0)

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
                      send: Callable[[pb.HostEvent], Awaitable[None]], caller: str | None = None) -> None:
        """Run the task described by the first message and send its events until it exits.

        A coroutine, not an async generator: when the home cancels the stream, the cancellation
        lands on whatever this awaits, so the cleanup that ends the task runs at once.
        """
        first = await anext(aiter(requests), None)
        kind = first.WhichOneof("kind") if first is not None else None
        if kind == "reattach" and first is not None:
            await self._reattach(first.reattach, requests, send, caller)
            return
        if kind not in ("start", "reserve"):
            self.refusals["malformed"] += 1
            await send(_refused("the first message on a task stream must start or reserve a task", retry=False))
            return
        spec = first.start if kind == "start" else first.reserve
        if problem := task_id_problem(spec.task_id):
            self.refusals["malformed"] += 1
            await send(_refused(f"{self.node_id}: malformed task: {problem}", retry=False))
            return
        if caller is not None and spec.home != caller:  # the certificate, not the message, says who
            self.refusals["wrong_home"] += 1
            await send(_refused(f"{self.node_id}: node {caller} cannot start a task for home {spec.home[:64]!r}",
                                retry=False))
            return
        hosted = [t.spec for t in self.tasks.values()]
        if refusal := self._rules.refusal(spec, self.node_id, hosted, self._starting):
            self.refusals["rules"] += 1
            await send(_refused(f"{self.node_id}: {refusal}", retry=True))
            return
        if self.leaving:
            self.refusals["leaving"] += 1
            await send(_refused(f"{self.node_id}: it is leaving the cluster", retry=True))
            return
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        reason = admit(self._own_load(), job, blocked=self._blocked(), starting=self._starting,
                       max_tasks=self._max_tasks)
        if reason:
            self.refusals["no_room"] += 1
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
            self.refusals["cannot_start"] += 1
            await send(_refused(f"{self.node_id}: {exc}", exc.retry))
            return
        finally:
            self._starting -= 1
        self.tasks[spec.task_id] = task
        log.info("task %s of %s %s: pid %d, %s", spec.task_id, spec.home,
                 "restored" if kind == "reserve" else "started", task.pid, " ".join(spec.argv))
        # The task lives in a job of its own: it outlives this stream if the home breaks it.
        runner = asyncio.ensure_future(self._run(task))
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        await self._attach(task, requests, send)

    async def _attach(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage],
                      send: Callable[[pb.HostEvent], Awaitable[None]]) -> None:
        """Hand a home stream to the task's runner, and hold it until the runner is done with it."""
        attachment = Attachment(requests, send)
        task.attachments.put_nowait(attachment)
        try:
            await asyncio.shield(attachment.released)
        except asyncio.CancelledError:
            pass  # the stream is gone (gRPC cancels its handler): the runner sees it break

    async def _reattach(self, task_id: str, requests: AsyncIterator[pb.HomeMessage],
                        send: Callable[[pb.HostEvent], Awaitable[None]], caller: str | None) -> None:
        """A restarted home takes a task back (its certificate must name the task's home)."""
        task = self.tasks.get(task_id)
        if task is None or (caller is not None and task.spec.home != caller):
            await send(_refused(f"{self.node_id}: no task {task_id[:64]!r} of that home runs here", retry=False))
            return
        log.info("task %s: its home %s takes it back", task_id, task.spec.home)
        await self._attach(task, requests, send)

    async def _warm_start(self, spec: pb.TaskSpec, requests: AsyncIterator[pb.HomeMessage],
                          send: Callable[[pb.HostEvent], Awaitable[None]]) -> HostedTask | None:
        """A move's target: start the interpreter now, while the task still runs on its source.

        It loads Python, the runtime and the pickler, then waits on a fresh port for the
        frozen source to stream the checkpoint to it (``mosrun.runtime.transfer``). The home learns
        the port and token in the reservation; on its start message the task runs from the
        checkpoint. None when the move is called off first (the interpreter is ended).
        """
        token = secrets.token_bytes(transfer.TOKEN_SIZE)
        try:
            ip = await asyncio.to_thread(netaddr.own_address, self._host)
            listener = socket.create_server((ip, 0), family=socket.AF_INET6 if ":" in ip else socket.AF_INET)
        except OSError as exc:
            raise SpawnError(f"cannot listen for the checkpoint on {self._host}: {exc.strerror or exc}") from None
        address = netaddr.join(ip, listener.getsockname()[1])
        try:
            task = await self._spawn(spec, restore=(listener, token))
        finally:
            listener.close()  # the interpreter holds its own copy
        try:
            said = await control_word(task, WARM_TIMEOUT)
            if said.get("t") != "ready":
                raise SpawnError(f"the task's interpreter did not start ({said.get('reason', 'it ended')})")
            await send(pb.HostEvent(reserved=pb.Reservation(checkpoint_to=address, token=token)))
            message = await anext(aiter(requests), None)
            if message is None or message.WhichOneof("kind") != "start":
                await self._discard(task)
                return None
            task.spec = message.start
            _set_origins(task)
            assert task.ctl is not None
            await asyncio.get_running_loop().sock_sendall(task.ctl, frames.encode({"t": "go"}))
            said = await control_word(task, RESTORE_TIMEOUT)
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

    async def _run(self, task: HostedTask) -> None:
        """The task's life here: its events go home on the stream it is attached to. When that
        stream breaks without the home ending the task, the task waits ``home_grace`` seconds
        for its home to come back (a restarted home daemon) before it is ended."""
        events = task.events
        helpers = [asyncio.create_task(self._usage(task, events)),
                   asyncio.create_task(self._write_stdin(task))]
        if task.ctl is not None:
            ctl_reader, task.ctl_writer = await asyncio.open_unix_connection(sock=task.ctl)
            helpers.append(asyncio.create_task(control_events(task, ctl_reader, events)))
        waiter = asyncio.create_task(self._wait_exit(task, events))
        pending = [pb.HostEvent(started=pb.TaskStarted(node_id=self.node_id, pid=task.pid))]
        attachment: Attachment | None = None
        try:
            attachment = await task.attachments.get()
            while await self._serve(task, attachment, pending) == "broken":
                attachment.release()
                attachment = None
                if task.moved_away:
                    return  # the stream of a copy that moved on: nobody will take it back
                log.warning("task %s: the stream from its home %s broke; the task waits up to %g s for "
                            "its home to come back", task.spec.task_id, task.spec.home, self.home_grace)
                try:
                    attachment = await asyncio.wait_for(task.attachments.get(), self.home_grace)
                except asyncio.TimeoutError:
                    log.warning("task %s: its home %s did not come back within %g s; ending it",
                                task.spec.task_id, task.spec.home, self.home_grace)
                    return
                pending.insert(0, pb.HostEvent(started=pb.TaskStarted(
                    node_id=self.node_id, pid=task.pid, reattached=True, stdin_offset=task.stdin_written,
                    epoch=task.spec.epoch, movable=task.movable)))
        finally:
            if attachment is not None:
                attachment.release()
            for job in (*helpers, waiter):
                job.cancel()
            # Shielded: a cancellation (the node stops) must not cut the cleanup short and
            # leave the task running.
            cleanup = asyncio.ensure_future(self._cleanup(task))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            await asyncio.shield(cleanup)

    async def _serve(self, task: HostedTask, attachment: Attachment, pending: list[pb.HostEvent]) -> str:
        """Carry events home on one stream, and what comes on it to the task, until the task
        exits ("exited"), the home ends it ("ended") or the stream breaks ("broken"; the
        events not delivered stay in ``pending``)."""
        feeder = asyncio.create_task(self._feed(task, attachment.requests))
        try:
            while True:
                if not pending:
                    getter = asyncio.ensure_future(task.events.get())
                    await asyncio.wait({getter, feeder}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        return "ended" if feeder.result() else "broken"
                    pending.append(getter.result())  # type: ignore[arg-type]
                event = pending[0]
                if event is None:
                    return "exited"
                try:
                    await attachment.send(event)
                except Exception:  # the stream is gone (grpc raises several kinds)
                    return "ended" if feeder.done() and feeder.result() else "broken"
                pending.pop(0)
        finally:
            feeder.cancel()

    async def _feed(self, task: HostedTask, requests: AsyncIterator[pb.HomeMessage]) -> bool:
        """What the home sends, to the task, until its stream ends; True if the home ended the
        task. stdin goes through the task's own writer, so that signals and moves get through
        while its pipe is full."""
        # A home holds a session to MAX_STDIN_AHEAD, and resends at most KEEP_BEHIND more to a
        # copy that takes over.
        window = StdinWindow(2 * (MAX_STDIN_AHEAD + KEEP_BEHIND))
        task.stdin_window = window
        try:
            async for message in requests:
                kind = message.WhichOneof("kind")
                try:
                    if kind == "stdin":
                        window.sent(len(message.stdin))
                        task.stdin_queue.put_nowait(message.stdin)
                    elif kind == "stdin_eof":
                        task.stdin_queue.put_nowait(None)
                    elif kind == "signal":
                        task.signal(message.signal)
                    elif kind == "freeze":
                        await ask_freeze(task, message.freeze)
                    elif kind == "verdict":
                        await give_verdict(task, message.verdict)
                    elif kind == "end":
                        log.info("task %s: its home ends it (its mosrun left)", task.spec.task_id)
                        return True
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the task closed its end, as a local process may
        except StdinOverrun as exc:
            log.warning("task %s: its home broke the protocol (%s); ending it", task.spec.task_id, exc)
            return True
        except Exception as exc:  # grpc reports a cancelled call this way
            log.debug("task %s: home stream failed: %r", task.spec.task_id, exc)
        finally:
            # What this stream sent and the task did not get yet is resent by a home that
            # comes back, from task.stdin_written on.
            while not task.stdin_queue.empty():
                task.stdin_queue.get_nowait()
        return False

    async def _write_stdin(self, task: HostedTask) -> None:
        while True:  # until the runner cancels it
            chunk = await task.stdin_queue.get()
            if task.stdin_closed:
                continue  # a home that came back resends what it has: the end came already
            if chunk is None:
                task.stdin_closed = True
                task.stdin.close()
                continue
            # Counted once handed over: it reaches the pipe even if this job is cancelled.
            task.stdin_written += len(chunk)
            try:
                task.stdin.write(chunk)
                await task.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the task closed its stdin, as a local process may; keep acknowledging
            if task.stdin_window is not None:
                task.stdin_window.acked(len(chunk))
            await task.events.put(pb.HostEvent(stdin_ack=len(chunk)))

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

    @property
    def starting(self) -> int:
        """Starts accepted and not finished yet."""
        return self._starting

    def guests(self) -> list[HostedTask]:
        """The tasks running here for other homes."""
        return [t for t in self.tasks.values() if not t.local]

    async def evict(self, task_id: str, reason: str) -> None:
        """End a guest this node cannot keep (it is leaving): its home hears why first, and
        then the exit status as usual."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        await task.events.put(pb.HostEvent(evicted=reason))
        await self._kill(task, reason)

    async def _kill(self, task: HostedTask, why: str = "home session gone") -> None:
        """End a task (its home went away, or this node leaves): SIGTERM, then SIGKILL after a
        grace period."""
        log.info("task %s: %s, ending it", task.spec.task_id, why)
        task.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(task.exited), KILL_GRACE)
        except asyncio.TimeoutError:
            task.signal(signal.SIGKILL)
            await task.exited

    async def _spawn(self, spec: pb.TaskSpec, restore: tuple[socket.socket, bytes] | None = None) -> HostedTask:
        # The scratch directory (made here, removed at exit) must be a child of our own root.
        scratch = self._scratch_root / spec.task_id
        if task_id_problem(spec.task_id) or scratch.parent != self._scratch_root:
            raise SpawnError(f"malformed task id {spec.task_id[:40]!r}", retry=False)
        if not os.access(spec.executable, os.X_OK):
            raise SpawnError(f"{spec.executable} does not exist here or is not executable")
        identity = self._identity(spec)
        streams = await open_streams(spec)
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
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
        stdin = await stdin_writer(stdin_w)
        task = HostedTask(spec=spec, pid=pid, stdin=stdin, exited=self._spawner.exit_status(pid), scratch=scratch,
                          local=spec.home == self.node_id, ctl=ctl, outputs=outputs)
        _set_origins(task)
        return task

    def _identity(self, spec: pb.TaskSpec) -> dict[str, object]:
        """Run the task as its user: switch to them when root, else only run our own user's tasks."""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(spec.user)
            except KeyError:
                raise SpawnError(f"user {spec.user} does not exist here") from None
            if pw.pw_uid == 0 and not self._rules.run_as_root:
                raise SpawnError(f"tasks of {spec.user} (uid 0) are not run here (security.run_as_root)")
            return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(spec.user, pw.pw_gid)}
        if spec.uid != os.geteuid():
            raise SpawnError(f"this daemon runs as uid {os.geteuid()} and cannot run tasks of {spec.user}")
        return {}


