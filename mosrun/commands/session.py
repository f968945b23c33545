"""mosrun's side of a task's session: one event loop for the home daemon's socket, the
terminal and the task's direct streams.

The session socket carries the control: the launch, stdin, signals, notices and the exit
status. The task's stdout, stderr and file requests come straight from the node running it
(``mosrun.commands.dataplane``) and are served in the same loop. Standard library only.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

from mosrun.commands.dataplane import DataPlane
from mosrun.runtime import frames

EXIT_LAUNCH = 125
EXIT_LOST = 255
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
OUT_HIGH_WATER = 1 << 20   # stop reading stdin while this much is waiting to reach the daemon
STDIN_WINDOW = 1 << 20     # at most this much stdin not yet written into the task
RECV_SIZE = 1 << 16        # the session carries control frames only
STDIN_CHUNK = 64 * 1024
RECONNECT_EVERY = 0.5      # while the home daemon is away: how often to look for it again


def fail(message: str, code: int) -> None:
    """Say what went wrong on one line and exit with ``code``."""
    sys.stderr.write(f"mosrun: {message}\n")
    raise SystemExit(code)


class Session:
    """One task's session with the home daemon: the event loop on this side.

    The session socket carries the control: the launch, stdin, signals, notices and the exit
    status. The task's stdout, stderr and file requests come straight from the node running
    it, on the streams of :class:`mosrun.commands.dataplane.DataPlane`, served in the same loop.
    """

    def __init__(self, sock: socket.socket, path: str = "") -> None:
        self.sock = sock
        self.path = path            # the session socket: where a restarted daemon listens again
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        self.plane: DataPlane | None = None
        self.session_open = True
        self.stdin_open = True
        self.stdin_in_flight = 0    # sent, not yet acknowledged as written into the task
        self.stdin_kept = bytearray()  # ... and those bytes: a restarted home may need them again
        self.stdin_acked = 0        # the stream offset of stdin_kept[0]
        self.stdin_ended = False    # the end of stdin was sent
        self.task_id = ""
        self.started = False
        self.home_restart = 0.0     # how long to wait for a restarted home daemon (its hello says)
        self.away_until: float | None = None  # the home daemon is away: give up at this time
        self.rejoining = False      # back, not yet holding the task again: no new stdin yet
        self.next_try = 0.0
        self.stdin_polled = False   # stdin cannot be watched (a regular file): read it when there is room
        self.status: int | None = None
        self.error = ""             # said once the task's last output is out
        wake_r, self.wake_w = socket.socketpair()
        wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.wake_r = wake_r

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.outbuf += frames.encode(header, payload)

    def run(self, launch: dict[str, Any]) -> int:
        hello = self._hello()
        try:
            self.plane = DataPlane(self.sel, str(hello.get("host", "")), str(hello.get("task", "")),
                                   check_replay=bool(launch.get("checkpoint_every")))
        except (OSError, UnicodeError, ValueError) as exc:
            fail(f"cannot listen for the task's output on {hello.get('host')!r}: "
                 f"{getattr(exc, 'strerror', None) or exc}", EXIT_LAUNCH)
        assert self.plane is not None
        self.sock.setblocking(False)
        self.task_id = str(hello.get("task", ""))
        self.home_restart = float(hello.get("home_restart", 0) or 0)
        self.send({**launch, "streams_to": self.plane.endpoint, "streams_token": self.plane.token.hex()})
        signal.set_wakeup_fd(self.wake_w.fileno())
        for sig in FORWARDED:
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        try:
            self.sel.register(0, selectors.EVENT_READ)
        except PermissionError:
            self.stdin_polled = True  # a regular file: epoll cannot watch it, it is always readable
        except (ValueError, OSError):
            self._eof_stdin()  # no usable stdin at all: the task sees an empty one
        while not (self.status is not None and self.plane.done()):
            if self.away_until is not None:
                self._look_for_home()
            self._update_interest()
            timeout = self.plane.timeout()
            if self.stdin_polled and self._room_for_stdin():
                timeout = 0
            if self.away_until is not None:
                timeout = RECONNECT_EVERY if timeout is None else min(timeout, RECONNECT_EVERY)
            for key, events in self.sel.select(timeout):
                if key.data is not None:
                    # A stream of the task, unless an earlier callback of this batch changed
                    # what it is for (or closed it): then the next select says it afresh.
                    now = self.sel.get_map().get(key.fd)
                    if now is not None and now.data is key.data:
                        key.data(events)
                elif key.fileobj is self.sock:
                    if events & selectors.EVENT_WRITE:
                        self._flush()
                    if events & selectors.EVENT_READ:
                        self._receive()
                elif key.fileobj is self.wake_r:
                    for signum in self.wake_r.recv(64):
                        self.send({"t": "signal", "sig": signum})
                elif key.fileobj == 0:
                    self._read_stdin()
            self.plane.tick()
            if self.stdin_polled and self._room_for_stdin():
                self._read_stdin()
        self.plane.close()
        if self.error:
            sys.stderr.write(f"mosrun: {self.error}\n")
        return self.status

    def _hello(self) -> dict[str, Any]:
        """The daemon's first frame: the task's id and the address to take its streams on."""
        try:
            frame = frames.recv_frame(self.sock)
        except (OSError, frames.ProtocolError):
            frame = None
        if frame is None:
            fail("the home daemon closed the session (was it stopped?)", EXIT_LOST)
        assert frame is not None
        header = frame[0]
        if header["t"] == "error":
            fail(str(header.get("message", "failed")), int(header.get("code", EXIT_LAUNCH)))
        if header["t"] != "hello":
            fail(f"the home daemon spoke out of turn ({header['t']!r})", EXIT_LAUNCH)
        return header

    def _room_for_stdin(self) -> bool:
        return (self.stdin_open and self.away_until is None and not self.rejoining
                and len(self.outbuf) < OUT_HIGH_WATER and self.stdin_in_flight < STDIN_WINDOW)

    # ---- a home daemon that restarts -------------------------------------------------------------

    def _home_gone(self) -> None:
        """The home daemon closed the session while the task runs. The task's node keeps it
        for a while: wait as long for the daemon to come back and take the task back."""
        if not (self.started and self.home_restart > 0 and self.path):
            fail("the home daemon closed the session (was it stopped?)", EXIT_LOST)
        if self.session_open:
            self.sel.unregister(self.sock)
            self.session_open = False
        self.sock.close()
        self.outbuf.clear()
        self.inbuf.clear()
        self.away_until = time.monotonic() + self.home_restart
        self.next_try = time.monotonic() + RECONNECT_EVERY
        sys.stderr.write(f"mosrun: the home daemon went away; task {self.task_id} runs on, waiting up to "
                         f"{self.home_restart:g} s for the daemon to come back\n")
        sys.stderr.flush()

    def _look_for_home(self) -> None:
        assert self.away_until is not None
        now = time.monotonic()
        if now < self.next_try:
            return
        if now >= self.away_until:
            fail(f"the home daemon did not come back within {self.home_restart:g} s; task {self.task_id} "
                 "is ended", EXIT_LOST)
        self.next_try = now + RECONNECT_EVERY
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5.0)
            sock.connect(self.path)
            frame = frames.recv_frame(sock)
            if frame is None or frame[0].get("t") != "hello":
                raise ConnectionError("no hello")
            assert self.plane is not None
            frames.send_frame(sock, {"t": "reattach", "task": self.task_id, "token": self.plane.token.hex()})
        except (OSError, ConnectionError, frames.ProtocolError):
            sock.close()
            return  # not back yet
        sock.setblocking(False)
        self.sock, self.session_open, self.away_until, self.rejoining = sock, True, None, True
        self.sel.register(self.sock, selectors.EVENT_READ)

    def _taken_back(self, header: dict[str, Any]) -> None:
        """The restarted daemon has the task again: resend the stdin its pipe has not had."""
        self.rejoining = False
        start = int(header.get("stdin_from", 0))
        drop = max(0, min(start - self.stdin_acked, len(self.stdin_kept)))
        del self.stdin_kept[:drop]
        self.stdin_acked += drop
        for at in range(0, len(self.stdin_kept), STDIN_CHUNK):
            self.send({"t": "stdin"}, bytes(self.stdin_kept[at:at + STDIN_CHUNK]))
        self.stdin_in_flight = len(self.stdin_kept)
        if self.stdin_ended:
            self.send({"t": "stdin_eof"})
        sys.stderr.write(f"mosrun: the home daemon is back and has task {self.task_id} again\n")
        sys.stderr.flush()

    def _update_interest(self) -> None:
        if self.session_open:
            self.sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0))
        if self.stdin_open and not self.stdin_polled:
            watching, room = 0 in self.sel.get_map(), self._room_for_stdin()
            if watching and not room:
                self.sel.unregister(0)
            elif room and not watching:
                self.sel.register(0, selectors.EVENT_READ)

    def _stop_stdin(self) -> None:
        self.stdin_open = False
        if 0 in self.sel.get_map():
            self.sel.unregister(0)

    def _eof_stdin(self) -> None:
        self._stop_stdin()
        self.stdin_ended = True
        self.send({"t": "stdin_eof"})

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, STDIN_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.send({"t": "stdin"}, data)
            self.stdin_in_flight += len(data)
            self.stdin_kept += data
            return
        self._eof_stdin()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            # The daemon stopped listening; its last frames may still be waiting to be read.
            self.outbuf.clear()
            if not self.started:
                self._stop_stdin()
            return
        del self.outbuf[:sent]

    def _receive(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            if self.status is not None:
                self.sel.unregister(self.sock)  # said all it had to; the task's output may still come
                self.session_open = False
                return
            self._home_gone()
            return
        self.inbuf += data
        start, prefix = 0, frames.PREFIX.size
        while len(self.inbuf) - start >= prefix and self.status is None:
            head_len, payload_len = frames.check_sizes(self.inbuf[start:start + prefix])
            end = start + prefix + head_len + payload_len
            if len(self.inbuf) < end:
                break
            self._handle(frames.decode_header(bytes(self.inbuf[start + prefix:start + prefix + head_len])))
            start = end
        del self.inbuf[:start]

    def _handle(self, header: dict[str, Any]) -> None:
        assert self.plane is not None
        kind = header["t"]
        if kind == "stdin_ack":
            acked = int(header.get("n", 0))
            self.stdin_in_flight -= acked
            del self.stdin_kept[:acked]
            self.stdin_acked += acked
        elif kind == "started":
            self.started = True
            self.plane.start()
        elif kind == "reattached":
            self._taken_back(header)
        elif kind == "epoch":  # the task moved on to a newer copy
            origins = header.get("origins")
            valid = (isinstance(origins, list) and len(origins) == 2
                     and all(type(x) is int and x >= 0 for x in origins))
            self.plane.switch(int(header["epoch"]), tuple(origins) if valid else None)
        elif kind == "exit":
            sig = int(header.get("signal") or 0)
            self.status = 128 + sig if sig else int(header.get("code", 0))
            self.plane.finish()
        elif kind == "error":
            self.error = str(header.get("message", "failed"))
            self.status = int(header.get("code", EXIT_LAUNCH))
            self.plane.finish()
        elif kind == "notice":
            sys.stderr.write(f"mosrun: {header.get('text', '')}\n")
        elif kind == "queued":
            sys.stderr.write(f"mosrun: waiting for a node to take the task, place {header.get('position', '?')} in "
                             f"the queue ({header.get('reason', '')})\n")
