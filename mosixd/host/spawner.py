"""Starting task processes without fork() in the gRPC daemon.

gRPC's fork handlers make a plain fork() of the daemon crash, and uvloop cannot set a
child's umask or user. So the daemon starts, with posix_spawn, a small single-threaded
helper (``python -m mosixd.host.spawner``) that does the forking. The daemon sends it one
SOCK_SEQPACKET message per task (a JSON frame plus the task's stdio and control fds as
SCM_RIGHTS); the helper answers with the pid or the error, and later reports each exit.
When the daemon dies the socket closes, and the helper kills the tasks it started: a node's
tasks do not outlive it.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from mosrun.runtime import frames

MAX_MESSAGE = 1 << 20
MAX_FDS = 8


class SpawnFailed(OSError):
    """The helper could not start the program (errno and strerror as from exec)."""


# ---- the helper process ---------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    children: dict[int, subprocess.Popen[bytes]] = {}
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is wake_r:
                    wake_r.recv(256)
                    _report_exits(sock, children)
                    continue
                msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
                if not msg:
                    return
                try:
                    _spawn(sock, frames.decode_header(msg[frames.PREFIX.size:]), fds, children)
                finally:
                    for fd in fds:
                        os.close(fd)
    finally:
        for proc in children.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


def _spawn(sock: socket.socket, req: dict[str, Any], fds: list[int], children: dict[int, subprocess.Popen[bytes]]) -> None:
    env = dict(req["env"])
    stdin, stdout, stderr, *extra = fds
    # Extra fds (the runtime's channels) keep the numbers they got here; their environment
    # variables say which is which.
    for name, fd in zip(req.get("fd_env", []), extra):
        env[str(name)] = str(fd)
    kwargs: dict[str, Any] = {}
    if req.get("user") is not None:
        kwargs.update(user=req["user"], group=req["group"], extra_groups=req["groups"])
    try:
        proc = subprocess.Popen(
            req["args"], executable=req["executable"], stdin=stdin, stdout=stdout, stderr=stderr,
            cwd=req["cwd"], env=env, start_new_session=True, umask=req["umask"], pass_fds=extra, **kwargs)
    except OSError as exc:
        reply: dict[str, Any] = {"t": "spawned", "id": req["id"], "errno": exc.errno, "strerror": exc.strerror}
    else:
        children[proc.pid] = proc
        if req.get("cpuset"):
            try:  # the node's share of a shared host; children inherit it
                os.sched_setaffinity(proc.pid, req["cpuset"])
            except OSError:
                pass
        reply = {"t": "spawned", "id": req["id"], "pid": proc.pid}
    sock.sendall(frames.encode(reply))


def _report_exits(sock: socket.socket, children: dict[int, subprocess.Popen[bytes]]) -> None:
    for pid, proc in list(children.items()):
        code = proc.poll()
        if code is not None:
            del children[pid]
            sock.sendall(frames.encode({"t": "exit", "pid": pid, "code": code}))


# ---- the daemon's side ----------------------------------------------------------------------


class Spawner:
    """The daemon's handle on its spawn helper (asyncio)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._helper_pid = 0
        self._ids = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._early_exits: dict[int, int] = {}

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        # posix_spawn: no fork handlers run, unlike fork(); the helper's end becomes fd 3. Its
        # own session keeps a terminal's Ctrl-C away from it, without ignoring SIGINT (an
        # ignored signal would stay ignored in every task it starts).
        self._helper_pid = os.posix_spawn(
            sys.executable, [sys.executable, "-m", "mosixd.host.spawner", "3"], dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)], setsid=True)
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours, self._on_readable)

    async def spawn(self, *, args: list[str], executable: str, cwd: str, env: dict[str, str], umask: int,
                    identity: dict[str, Any], fds: list[int], fd_env: tuple[str, ...] = (),
                    cpuset: tuple[int, ...] = ()) -> int:
        """Start a program with stdin, stdout, stderr and extra fds (each named by the
        environment variable in ``fd_env``); returns its pid."""
        assert self._sock is not None, "spawner not started"
        self._ids += 1
        request = {"t": "spawn", "id": self._ids, "args": args, "executable": executable, "cwd": cwd,
                   "env": env, "umask": umask, "user": identity.get("user"), "group": identity.get("group"),
                   "groups": identity.get("extra_groups", []), "fd_env": list(fd_env),
                   "cpuset": list(cpuset)}
        future = self._pending[self._ids] = asyncio.get_running_loop().create_future()
        socket.send_fds(self._sock, [frames.encode(request)], fds)
        reply = await future
        if "pid" not in reply:
            raise SpawnFailed(reply.get("errno", 0), reply.get("strerror", "spawn failed"))
        return int(reply["pid"])

    def exit_status(self, pid: int) -> asyncio.Future[int]:
        """Resolves with the exit code (negative: killed by that signal), as Popen reports it."""
        future = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        if pid in self._early_exits:
            future.set_result(self._early_exits.pop(pid))
        return future

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            msg = self._sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        if not msg:
            asyncio.get_running_loop().remove_reader(self._sock)
            return
        header = frames.decode_header(msg[frames.PREFIX.size:])
        if header["t"] == "spawned":
            future = self._pending.pop(header["id"], None)
            if future is not None and not future.done():
                future.set_result(header)
        elif header["t"] == "exit":
            pid, code = int(header["pid"]), int(header["code"])
            future = self._exits.pop(pid, None)
            if future is None:
                self._early_exits[pid] = code
            elif not future.done():
                future.set_result(code)

    def stop(self) -> None:
        """Close the channel; the helper kills what is left and exits."""
        if self._sock is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._sock)
            except RuntimeError:
                pass
            self._sock.close()
            self._sock = None
        if self._helper_pid:
            deadline = time.monotonic() + 3.0
            try:
                while os.waitpid(self._helper_pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(self._helper_pid, signal.SIGKILL)
                    time.sleep(0.01)
            except ChildProcessError:
                pass
            self._helper_pid = 0


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
