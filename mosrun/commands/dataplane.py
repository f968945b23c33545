"""The direct data plane: a task's stdout, stderr and file-proxy streams, served by mosrun.

Before the node running a task starts it, its daemon connects to the user's mosrun once per
stream. A Python task gets its file-proxy stream as the runtime's socket; the task's stdout
and stderr are pipes that the daemon splices into their streams in the kernel
(``mosixd.host.outpipe``). No daemon relays these bytes at home; gRPC through the daemons carries
the control only: the start, stdin, signals, moves and the exit status.

A connection opens with one frame of :mod:`mosrun.runtime.frames` (its ``greeting``), the token
as its payload::

    {"t": "stream", "task": ID, "epoch": N, "kind": "stdout" | "stderr" | "files"} + token

and mosrun answers :data:`ACK` once it has taken the stream. A wrong token, a malformed or
late greeting, or anything else closes the connection, and mosrun says so on stderr.

Every copy of a task has its own epoch (a move or a failover starts a newer one) and its own
streams. Output is shown from one epoch at a time. The home daemon says when the task has
switched to a newer copy (:meth:`DataPlane.switch`); the older copy's output is then read to
its end first, bounded in time since its node may be gone. Until then a newer copy's output
waits unread, held back by TCP, and output of a copy whose epoch never becomes current is
discarded. File streams are served whatever their epoch: a move's target loads its
interpreter, through them, while the source still runs.

Output is exactly once. mosrun counts the bytes it has shown of each stream, all copies
together. With a newer copy the home daemon may give the offsets its output starts at: a copy
restarted from an older checkpoint prints again what was shown after that checkpoint, and
those bytes are dropped here (checked against what was shown, if still kept: a task that is
not deterministic from its checkpoint gets one line saying so). A copy that starts past what
was shown means output was lost with a node, and mosrun says how much.

Standard library only, and light: mosrun imports it at every start.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import socket
import sys
import time
from _operator import _compare_digest as compare_digest  # hmac.compare_digest, minus hashlib's import
from typing import Any

from mosrun.runtime import frames

TOKEN_SIZE, ACK, KINDS = frames.STREAM_TOKEN_SIZE, frames.STREAM_ACK, frames.STREAM_KINDS
MAX_GREETING = 4096       # a greeting header is under 200 bytes; more is garbage
GREETING_TIMEOUT = 10.0   # a connection must introduce itself within this
MAX_GREETING_CONNS = 256  # connections that have not yet; more are turned away...
MAX_GREETINGS_PER_PEER = 16  # ...and more than this from one address, so one user cannot
                             # hold every slot while a task's node needs one
MAX_STREAMS = 64          # streams held at once (a few per copy of the task)
DRAIN_IDLE = 5.0          # an older copy's output must keep coming (orphans may hold it open)
OUTPUT_CHUNK = 1 << 20
FILES_BUFFER = 8 << 20    # a file stream's request buffer: two of the largest requests
REPLY_HIGH_WATER = 8 << 20  # stop reading requests while this much of the replies is unsent
COMPLAIN_EVERY = 5.0      # at most one line on stderr per this many seconds about bad peers
REPLAY_KEPT = 4 << 20     # of a task checkpointed at home: output kept to check a replay against


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything; while the terminal is full we block here, so we stop reading, and TCP
    holds the task back."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return  # the reader went away, as it may for a local program too
        except BlockingIOError:  # someone made our stdout non-blocking: wait for room
            select.select([], [fd], [], 1.0)


class _Greeting:
    """A connection that has not yet said which stream it is."""

    __slots__ = ("sock", "ip", "peer", "data", "deadline")

    def __init__(self, sock: socket.socket, ip: str, peer: str, deadline: float) -> None:
        self.sock, self.ip, self.peer, self.deadline = sock, ip, peer, deadline
        self.data = bytearray()


class Stream:
    """One accepted stream of one copy of the task."""

    __slots__ = ("sock", "epoch", "kind", "files", "inbuf", "start", "end", "outbuf", "reading", "skip")

    def __init__(self, sock: socket.socket, epoch: int, kind: str) -> None:
        self.sock, self.epoch, self.kind = sock, epoch, kind
        self.skip: int | None = None    # output already shown, to drop (known once it is shown)
        self.files: Any = None          # HomeFiles of a file stream
        self.inbuf = bytearray()        # a file stream's requests: [start, end) not yet handled
        self.start = self.end = 0
        self.outbuf = bytearray()       # a file stream's replies the socket did not take yet
        self.reading = False


class DataPlane:
    """mosrun's listener and the streams of its task, on the session's selector.

    Callbacks are the selector keys' data: the session loop calls ``key.data(events)``, unless
    an earlier callback of the same batch replaced that key's data. The loop also calls
    :meth:`tick` with at most :meth:`timeout` seconds between calls.
    """

    def __init__(self, sel: selectors.BaseSelector, host: str, task_id: str, check_replay: bool = False) -> None:
        """``check_replay``: keep the last output shown, to check a restarted copy's against."""
        self.sel = sel
        self.task_id = task_id
        # secrets.token_bytes is os.urandom; importing secrets would cost a few ms per start.
        self.token = os.urandom(TOKEN_SIZE)
        if host in ("", "0.0.0.0", "::"):
            raise ValueError("the home node has no address of its own to take the task's streams on")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.bind((host, 0))  # the home node's own address, never the wildcard
            self.listener.listen(64)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.host, self.port = self.listener.getsockname()[:2]  # a name resolved: its address
        self.epoch = 0                    # the copy whose output is shown
        self.showing = False              # the home daemon confirmed the start (see start())
        self.next_epoch: int | None = None  # a newer copy to show once this one's output ended
        self.finishing = False            # the task has exited: read the rest, then stop
        self.idle_since = 0.0             # last progress while draining or finishing
        self.greetings: dict[socket.socket, _Greeting] = {}
        self.streams: list[Stream] = []
        self._buf = bytearray(OUTPUT_CHUNK)
        self._view = memoryview(self._buf)
        self._complained = -COMPLAIN_EVERY
        self.shown = {"stdout": 0, "stderr": 0}  # bytes shown of each stream, all copies together
        self.kept: dict[str, bytearray] | None = (
            {"stdout": bytearray(), "stderr": bytearray()} if check_replay else None)
        self.origins: dict[int, tuple[int, int]] = {}  # epoch -> where its stdout, stderr start
        self.warned: set[str] = set()
        sel.register(self.listener, selectors.EVENT_READ, self._accept)

    @property
    def endpoint(self) -> str:
        """Where the task's streams connect: "host:port" ("[v6]:port")."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ---- what the session asks ---------------------------------------------------------------

    def start(self) -> None:
        """The task has started: show its output. Not before, as on a start that is then
        reported failed, a node's output would already be on the user's terminal."""
        if not self.showing:
            self.showing = True
            for stream in self.streams:
                if stream.kind != "files" and stream.epoch == self.epoch:
                    self._watch(stream)

    def switch(self, epoch: int, origins: tuple[int, int] | None = None) -> None:
        """The task now runs as copy ``epoch``: finish the current copy's output, then show its.
        ``origins``: the stream offsets its stdout and stderr start at, if known."""
        floor = self.epoch if self.next_epoch is None else self.next_epoch
        if epoch <= floor:
            return
        if origins is not None:
            self.origins[epoch] = origins
        if self.next_epoch is None:
            self.idle_since = time.monotonic()
        self.next_epoch = epoch
        for stream in [s for s in self.streams if self.epoch < s.epoch < epoch]:
            self._drop(stream)  # a copy between the two never became current (a called-off move)
        self._advance()

    def finish(self) -> None:
        """The task has exited: read what its current copy still sends, then :meth:`done`."""
        if not self.finishing:
            self.finishing = True
            self.idle_since = time.monotonic()
            if not self.showing:  # it never started: nothing of it is to be shown
                for stream in list(self.streams):
                    self._drop(stream)

    def done(self) -> bool:
        """After :meth:`finish`: no output or file request of the current copy is left."""
        if not self.finishing or self.next_epoch is not None:
            return False
        return not any(s.epoch == self.epoch for s in self.streams)

    def timeout(self) -> float | None:
        """Seconds until :meth:`tick` has something to do (None: nothing pending)."""
        deadlines = [g.deadline for g in self.greetings.values()]
        if self.next_epoch is not None or self.finishing:
            deadlines.append(self.idle_since + DRAIN_IDLE)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def tick(self) -> None:
        """Give up on greetings and drains that took too long."""
        now = time.monotonic()
        for pending in [g for g in self.greetings.values() if g.deadline <= now]:
            self._refuse(pending, "it did not introduce itself in time", complain=True)
        if (self.next_epoch is not None or self.finishing) and now - self.idle_since >= DRAIN_IDLE:
            # The copy's output did not end: an orphan holds it open, or its node is gone.
            for stream in [s for s in self.streams if s.epoch == self.epoch]:
                self._drop(stream)
            self._advance()

    def close(self) -> None:
        """Close every stream (and the files their copies left open) and the listener."""
        for stream in list(self.streams):
            self._drop(stream)
        for pending in list(self.greetings.values()):
            self._forget(pending)
        self.sel.unregister(self.listener)
        self.listener.close()

    # ---- connections ---------------------------------------------------------------------------

    def _accept(self, _events: int) -> None:
        for _ in range(MAX_GREETING_CONNS):  # bounded: the loop has other work too
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of fds: the peer sees its connection fail
            peer = f"{addr[0]}:{addr[1]}"
            from_there = sum(1 for g in self.greetings.values() if g.ip == addr[0])
            if (len(self.greetings) >= MAX_GREETING_CONNS or from_there >= MAX_GREETINGS_PER_PEER
                    or len(self.streams) >= MAX_STREAMS):
                self._complain(f"refused a connection from {peer}: too many at once")
                sock.close()
                continue
            sock.setblocking(False)
            pending = self.greetings[sock] = _Greeting(sock, addr[0], peer, time.monotonic() + GREETING_TIMEOUT)
            self.sel.register(sock, selectors.EVENT_READ, lambda _e, p=pending: self._greet(p))

    def _greet(self, pending: _Greeting) -> None:
        data = pending.data
        # Read exactly the greeting: nothing else may follow before our answer.
        need = frames.PREFIX.size
        if len(data) >= need:
            head_len, payload_len = frames.PREFIX.unpack_from(data)
            if head_len > MAX_GREETING or payload_len != TOKEN_SIZE:
                return self._refuse(pending, "not a greeting", complain=True)
            need += head_len + payload_len
        try:
            chunk = pending.sock.recv(need - len(data))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            chunk = b""
        if not chunk:
            return self._refuse(pending, "it closed before introducing itself", complain=True)
        data += chunk
        if len(data) == frames.PREFIX.size:
            return self._greet(pending)  # the sizes are in: check them, read the rest
        if len(data) < need:
            return None
        head_len = frames.PREFIX.unpack_from(data)[0]
        token = bytes(data[need - TOKEN_SIZE:])
        if not compare_digest(token, self.token):
            return self._refuse(pending, "wrong token", complain=True)
        try:
            header = json.loads(bytes(data[frames.PREFIX.size:frames.PREFIX.size + head_len]))
            epoch, kind = header["epoch"], header["kind"]
            ok = (header.get("t") == "stream" and header.get("task") == self.task_id and kind in KINDS
                  and type(epoch) is int and epoch >= 0)
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            return self._refuse(pending, "malformed greeting", complain=True)
        floor = self.epoch if self.next_epoch is None else self.next_epoch
        if epoch < floor:
            # A copy older than the one shown (or about to be): its time has passed.
            return self._refuse(pending, "stale copy", complain=False)
        for old in [s for s in self.streams if s.epoch == epoch and s.kind == kind]:
            self._drop(old)  # the newest start of a copy wins (an earlier attempt failed)
        self._forget(pending)
        try:
            pending.sock.send(ACK)
        except OSError:
            pending.sock.close()
            return None
        self._adopt(Stream(pending.sock, epoch, kind))
        return None

    def _refuse(self, pending: _Greeting, why: str, complain: bool) -> None:
        self._forget(pending)
        pending.sock.close()
        if complain:
            self._complain(f"refused a connection from {pending.peer} to the task's streams ({why})")

    def _forget(self, pending: _Greeting) -> None:
        self.greetings.pop(pending.sock, None)
        try:
            self.sel.unregister(pending.sock)
        except (KeyError, ValueError):
            pass

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_EVERY:  # a flood must not flood the user's terminal
            self._complained = now
            sys.stderr.write(f"mosrun: {message}\n")
            sys.stderr.flush()

    def _adopt(self, stream: Stream) -> None:
        stream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies and lines go at once
        self.streams.append(stream)
        if stream.kind == "files":
            from mosrun.commands.homefs import HomeFiles

            stream.files = HomeFiles(os.getcwd())
            stream.reading = True
            self.sel.register(stream.sock, selectors.EVENT_READ, lambda e, s=stream: self._serve(s, e))
        else:
            self._watch(stream)

    def _watch(self, stream: Stream) -> None:
        """Read the current copy's output; watch a newer copy's (or any before the start is
        confirmed) only for its end: unread data stays in its socket until it is to be shown."""
        if stream.epoch == self.epoch and self.showing:
            callback = lambda _e, s=stream: self._output(s)  # noqa: E731
        else:
            callback = lambda _e, s=stream: self._peek(s)  # noqa: E731
        try:
            self.sel.modify(stream.sock, selectors.EVENT_READ, callback)
        except KeyError:
            self.sel.register(stream.sock, selectors.EVENT_READ, callback)
        stream.reading = True

    def _drop(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
        if stream.reading:
            self.sel.unregister(stream.sock)
            stream.reading = False
        if stream.files is not None:
            stream.files.close_all()  # what the copy left open on this stream
        stream.sock.close()
        self._advance()

    def _advance(self) -> None:
        """Switch to the newer copy once no output of the current one is left to read."""
        if self.next_epoch is None or any(s.epoch == self.epoch and s.kind != "files" for s in self.streams):
            return
        self.epoch, self.next_epoch = self.next_epoch, None
        self.idle_since = time.monotonic()
        for stream in list(self.streams):
            if stream.kind != "files" and stream.epoch < self.epoch:
                self._drop(stream)
            elif stream.kind != "files" and stream.epoch == self.epoch:
                self._watch(stream)

    # ---- output --------------------------------------------------------------------------------

    def _output(self, stream: Stream) -> None:
        fd = 1 if stream.kind == "stdout" else 2
        try:
            n = stream.sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0  # reset: the copy is gone
        if not n:
            self._drop(stream)
            return
        data = self._view[:n]
        if stream.skip is None:
            stream.skip = self._already_shown(stream)
        if stream.skip:
            data = self._replayed(stream, data)
        if data:
            write_all(fd, data)
            self.shown[stream.kind] += len(data)
            if self.kept is not None:
                kept = self.kept[stream.kind]
                kept += data
                if len(kept) > REPLAY_KEPT:
                    del kept[:len(kept) - REPLAY_KEPT]
        self.idle_since = time.monotonic()  # after the write: a slow terminal is progress too

    def _already_shown(self, stream: Stream) -> int:
        """How much of a copy's output was shown already (it restarted from a checkpoint)."""
        origins = self.origins.get(stream.epoch)
        if origins is None:
            return 0
        origin = origins[0 if stream.kind == "stdout" else 1]
        shown = self.shown[stream.kind]
        if origin > shown:
            self._warn_once(f"lost-{stream.kind}", f"{origin - shown} bytes of the task's {stream.kind} "
                                                   "were lost with the node that ran it")
            self.shown[stream.kind] = origin
            return 0
        return shown - origin

    def _replayed(self, stream: Stream, data: memoryview) -> memoryview:
        """Drop the part of ``data`` that was shown already, checking it against what was."""
        assert stream.skip is not None
        take = min(len(data), stream.skip)
        kept = self.kept[stream.kind] if self.kept is not None else None
        if kept is not None:
            at = len(kept) - stream.skip  # where these bytes were in what is kept
            if at >= 0 and kept[at:at + take] != data[:take]:
                self._warn_once(f"differs-{stream.kind}", (
                    f"the {stream.kind} of task {self.task_id} after its restart differs from what was shown "
                    "before (it is not deterministic from its checkpoint); what was shown is not shown again"))
        stream.skip -= take
        return data[take:]

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            sys.stderr.write(f"mosrun: {message}\n")
            sys.stderr.flush()

    def _peek(self, stream: Stream) -> None:
        """An output stream not shown yet stirred: its end (a copy called off) or data to keep."""
        if stream.epoch == self.epoch and self.showing:
            return self._output(stream)
        try:
            data = stream.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(stream)
            return
        self.sel.unregister(stream.sock)  # data waits in the socket; stop watching until current
        stream.reading = False

    # ---- file requests -------------------------------------------------------------------------

    def _serve(self, stream: Stream, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._send_replies(stream)
        if events & selectors.EVENT_READ and len(stream.outbuf) < REPLY_HIGH_WATER:
            self._read_requests(stream)
        if stream in self.streams:
            want = selectors.EVENT_WRITE if stream.outbuf else 0
            if len(stream.outbuf) < REPLY_HIGH_WATER:
                want |= selectors.EVENT_READ  # past the mark, wait for the task to read replies
            self.sel.modify(stream.sock, want, lambda e, s=stream: self._serve(s, e))

    def _read_requests(self, stream: Stream) -> None:
        if not stream.inbuf:
            stream.inbuf = bytearray(FILES_BUFFER)
        buf = stream.inbuf
        if stream.end == len(buf):
            # Full: move the unfinished request to the front, growing for a larger one.
            rest = stream.end - stream.start
            buf[:rest] = buf[stream.start:stream.end]
            stream.start, stream.end = 0, rest
            if rest == len(buf):
                head_len, payload_len = frames.check_sizes(bytes(buf[:frames.PREFIX.size]))
                buf.extend(bytes(frames.PREFIX.size + head_len + payload_len - rest))
        try:
            with memoryview(buf) as view:
                n = stream.sock.recv_into(view[stream.end:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._drop(stream)  # the copy ended (or moved): its open files are closed
            return
        stream.end += n
        try:
            self._handle_requests(stream)
        except frames.ProtocolError as exc:
            self._complain(f"dropped a file stream of the task: {exc}")
            self._drop(stream)
            return
        if stream.epoch == self.epoch:
            self.idle_since = time.monotonic()

    def _handle_requests(self, stream: Stream) -> None:
        """Perform every complete request in the buffer, in order, replying to each."""
        prefix = frames.PREFIX.size
        with memoryview(stream.inbuf) as view:
            start, end = stream.start, stream.end
            while end - start >= prefix:
                head_len, payload_len = frames.check_sizes(view[start:start + prefix])
                stop = start + prefix + head_len + payload_len
                if stop > end:
                    break
                request = frames.decode_header(view[start + prefix:start + prefix + head_len].tobytes())
                # The payload (a write's data) is used in place, not copied.
                reply, data = stream.files.handle(request, view[start + prefix + head_len:stop])
                self._reply(stream, frames.encode_head(reply, len(data)), data)
                start = stop
        stream.start, stream.end = (0, 0) if start == end else (start, end)

    def _reply(self, stream: Stream, head: bytes, data: bytes) -> None:
        if not stream.outbuf:
            try:
                sent = stream.sock.sendmsg([head, data] if data else [head])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the copy is gone; its end shows on the reading side
            if sent >= len(head):
                stream.outbuf += memoryview(data)[sent - len(head):]
                return
            stream.outbuf += memoryview(head)[sent:]
        else:
            stream.outbuf += head
        stream.outbuf += data

    def _send_replies(self, stream: Stream) -> None:
        try:
            sent = stream.sock.send(stream.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            stream.outbuf.clear()
            return
        del stream.outbuf[:sent]
