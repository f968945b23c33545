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

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        self.plane: DataPlane | None = None
        self.session_open = True
        self.stdin_open = True
        self.stdin_in_flight = 0    # sent, not yet acknowledged as written into the task
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
            self._update_interest()
            timeout = self.plane.timeout()
            if self.stdin_polled and self._room_for_stdin():
                timeout = 0
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
        return self.stdin_open and len(self.outbuf) < OUT_HIGH_WATER and self.stdin_in_flight < STDIN_WINDOW

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
            fail("the home daemon closed the session (was it stopped?)", EXIT_LOST)
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
            self.stdin_in_flight -= int(header.get("n", 0))
        elif kind == "started":
            self.plane.start()
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
