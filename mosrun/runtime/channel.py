"""The task's channel to its home: requests to the user's mosrun, replies in order.

The node running a task connects it to the user's mosrun on the home node before it starts
(``mosrun.commands.dataplane``) and hands the socket to the runtime. Every request for a home
file or module goes over it as a frame of :mod:`mosrun.runtime.frames`; mosrun performs it
(``mosrun.commands.homefs``) and replies. Standard library only, and cheap to import: it is
loaded at every task start.
"""

from __future__ import annotations

import _thread
import errno
import gc
import os
from _collections import deque  # what collections.deque is, without importing collections

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

CHUNK = 4 << 20            # largest read/write payload per request
MAX_HEADER, MAX_PAYLOAD = 1 << 20, 16 << 20   # as mosrun.runtime.frames
WINDOW = 16 << 20          # payload bytes (either way) of the requests awaiting replies
MAX_WAITING = 64           # requests awaiting replies: bounds what home holds for us
AHEAD_CHUNK = 1 << 20      # one read-ahead request: small enough to keep both ends busy
AHEAD_FILE = 16 << 20      # most one file reads ahead
AHEAD_TOTAL = 32 << 20     # most all files together hold read ahead (asked, not handed out)


def _codec() -> tuple[Any, Any]:
    """JSON through the C accelerator directly: importing ``json`` would pull in ``re``."""
    try:
        import _json

        class Context:
            strict, object_hook, object_pairs_hook, memo = True, None, None, {}
            parse_float, parse_int, parse_constant = float, int, float

        scan = _json.make_scanner(Context())
        enc = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",",
                                 False, False, True)

        def dumps(obj: Any) -> bytes:
            return "".join(enc(obj, 0)).encode("ascii")

        def loads(raw: bytes) -> Any:
            return scan(raw.decode("utf-8"), 0)[0]

        sample = {"t": [1, 2.5, None, True, "\udcff\u00e9"]}
        if loads(dumps(sample)) == sample:
            return dumps, loads
    except Exception:
        pass
    import json
    return (lambda obj: json.dumps(obj, separators=(",", ":")).encode()), json.loads


class Request:
    """One request sent to home, and then its reply: filled in by :meth:`Channel._pump`."""

    __slots__ = ("id", "cost", "into", "errors", "spare", "reply", "data", "done")

    def __init__(self, serial: int, cost: int, into: memoryview | None,
                 errors: list[dict[str, Any]] | None, spare: bool = False) -> None:
        self.id, self.cost, self.into, self.errors = serial, cost, into, errors
        self.spare = spare  # read the payload into a recycled buffer (see Channel.recycle)
        self.reply: dict[str, Any] = {}
        self.data: Any = b""
        self.done = False


class Channel:
    """Requests to the home mosrun over the inherited socket: a TCP stream straight to it,
    which the node opened for this task (``mosrun.commands.dataplane``).

    Frames are those of :mod:`mosrun.runtime.frames`, written here with ``os.writev``/``os.readv`` so
    that neither ``socket`` nor ``json`` is imported at task start. Home performs requests one
    after the other and replies in the same order, so a request need not wait for the reply to
    the one before: :meth:`post` sends one and returns (write-behind, read-ahead, seeks), while
    :meth:`call` sends one and reads replies until its own has come. The replies in between are
    kept in their :class:`Request`, or, for requests posted with an ``errors`` list, a failure
    is appended there for the file to raise later. At most :data:`WINDOW` bytes and
    :data:`MAX_WAITING` requests are ever awaiting replies: past that, :meth:`post` reads
    replies first, so a task writing faster than home can store blocks instead of buffering.

    An exchange is never cut in the middle: signal handlers that fire in a thread during its
    request are held in :attr:`pending` and run just after it (see :func:`deferring`), as they
    would wait for a local file system call, and the cyclic GC waits too, so that no finaliser
    closes a file from inside a request. The channel keeps what it needs as attributes, so
    that files still flush while the interpreter shuts down and module globals are gone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken: str | None = None
        self.pending: list[tuple[Any, int, Any]] = []   # (handler, signum, frame)
        self._lock = _thread.allocate_lock()
        self._owner: int | None = None
        self._main = _thread.get_ident()  # Python signal handlers only run in this thread
        self._serial = 0
        self._seen = 0                  # the newest request whose reply has been read
        self._waiting: Any = deque()    # requests sent, replies not read yet, oldest first
        self._in_flight = 0             # their cost (bytes of payload either way)
        self.ahead = 0                  # read-ahead bytes that files hold (asked, not consumed)
        self._changes: dict[Any, int] = {}  # file identity (None: any file) -> changes made
        self._count_lock = _thread.allocate_lock()  # for the two counters above
        # Buffers for chunks read ahead, used again once handed out: a fresh MiB each time
        # costs more (in page faults) than the copy out of it.
        self._spares: list[bytearray] = []
        # Made now, before the import hook is installed: importing _json later, from inside a
        # request, would ask that hook, hence this channel, for it.
        self._dumps, self._loads = _codec()
        self._ident, self._readv, self._writev = _thread.get_ident, os.readv, os.writev
        self._gc, self._limits, self._reset = gc, (MAX_HEADER, MAX_PAYLOAD), errno.ECONNRESET
        # Non-blocking, so that while a request waits for room on the way out, the replies
        # coming back are read: the other side may be waiting for that room itself.
        import select  # now: from inside a request, importing would ask the import hook
        os.set_blocking(fd, False)
        self._poller, self._in, self._out = select.poll(), select.POLLIN, select.POLLOUT
        self._poller.register(fd, self._in)

    def busy(self) -> bool:
        """Whether the calling thread is in the middle of a request."""
        return self._owner == self._ident()

    def call(self, op: str, args: dict[str, Any], payload: Any = b"",
             into: memoryview | None = None) -> tuple[dict[str, Any], Any]:
        """Send one request and wait for its reply: (header, payload bytes), or (header, byte
        count) when the payload was read straight ``into`` the caller's buffer."""
        request = self._submit(op, args, payload, into, None, 0, True)
        assert request is not None
        data = request.data
        return request.reply, (bytes(data) if data.__class__ is bytearray else data)

    def post(self, op: str, args: dict[str, Any], payload: Any = b"",
             errors: list[dict[str, Any]] | None = None, cost: int = 0,
             block: bool = True, spare: bool = False) -> Request | None:
        """Send one request without waiting for its reply, which lands in the returned
        :class:`Request` (and, if it is a failure, in ``errors``). ``cost`` counts against
        :data:`WINDOW`; when there is no room, wait for older replies, or with ``block=False``
        send nothing and return None. With ``spare``, the reply's payload (at most ``cost``
        bytes) is a view of a buffer to give back with :meth:`recycle` once used."""
        return self._submit(op, args, payload, None, errors, cost, False, block, 0, spare)

    def recycle(self, request: Request) -> None:
        """Take back the buffer of a ``spare`` request whose data nobody uses any more."""
        data = request.data
        request.data = b""
        if data.__class__ is memoryview and len(self._spares) < AHEAD_FILE // AHEAD_CHUNK:
            buf = data.obj
            data.release()
            self._spares.append(buf)

    def wait(self, serial: int) -> None:
        """Read replies until that of request ``serial`` (and so of all before it) is in."""
        if serial > self._seen:
            self._submit("", {}, b"", None, None, 0, True, True, serial)

    def settle(self) -> None:
        """Read the replies to everything sent so far (before a checkpoint, say)."""
        if self._serial > self._seen and not self.broken:
            self.wait(self._serial)

    def reserve(self, n: int, limit: int) -> bool:
        """Count ``n`` more read-ahead bytes, unless that would pass ``limit``."""
        with self._count_lock:
            if self.ahead + n > limit:
                return False
            self.ahead += n
            return True

    def unreserve(self, n: int) -> None:
        with self._count_lock:
            self.ahead -= n

    def touch(self, identity: Any) -> None:
        """Note a change to the data of the file ``identity`` (None: of any file), which
        makes what was read ahead from it stale."""
        with self._count_lock:
            self._changes[identity] = self._changes.get(identity, 0) + 1

    def changes(self, identity: Any) -> tuple[int, int]:
        """What :meth:`touch` counted for ``identity``: read-ahead is valid while it stays."""
        changes = self._changes
        return changes.get(None, 0), changes.get(identity, 0)

    def _submit(self, op: str, args: dict[str, Any], payload: Any, into: memoryview | None,
                errors: list[dict[str, Any]] | None, cost: int, wait: bool,
                block: bool = True, until: int = 0, spare: bool = False) -> Request | None:
        if self.broken:
            raise ConnectionError(self._reset, self.broken)
        if self.busy():
            raise RuntimeError("a home file operation started inside another one")
        try:
            with self._lock:
                waiting = self._waiting
                if not block and waiting and (self._in_flight + cost > WINDOW
                                              or len(waiting) >= MAX_WAITING):
                    return None
                views: list[memoryview] = []
                if op:
                    self._serial += 1
                    header = {"t": "fs", "op": op, "id": self._serial}
                    header.update(args)
                    head = self._dumps(header)  # may fail, harmlessly: nothing is sent yet
                    prefix = len(head).to_bytes(4, "big") + len(payload).to_bytes(4, "big")
                    views.append(memoryview(prefix + head))
                    if len(payload):
                        views.append(memoryview(payload))
                self._owner = self._ident()
                collecting = self._gc.isenabled()
                try:
                    if collecting:
                        self._gc.disable()
                    if not op:  # only waiting for replies
                        while waiting and waiting[0].id <= until:
                            self._pump()
                        return None
                    while waiting and (self._in_flight + cost > WINDOW
                                       or len(waiting) >= MAX_WAITING):
                        self._pump()
                    request = Request(self._serial, cost, into, errors, spare)
                    self._send(views)
                    waiting.append(request)
                    self._in_flight += cost
                    if wait:
                        while not request.done:
                            self._pump()
                    return request
                except BaseException:
                    if not self.broken:  # stopped half-way: the stream is out of step now
                        self.broken = "lost the home node's file proxy (interrupted request)"
                    raise
                finally:
                    self._owner = None
                    if collecting:
                        self._gc.enable()
        finally:
            while self.pending and self._ident() == self._main:
                handler, signum, frame = self.pending.pop(0)
                handler(signum, frame)

    def _pump(self) -> None:
        """Read the reply to the oldest request still waiting for one."""
        request = self._waiting[0]
        prefix = self._recv(8)
        hlen, plen = int.from_bytes(prefix[:4], "big"), int.from_bytes(prefix[4:], "big")
        if hlen > self._limits[0] or plen > self._limits[1]:
            self._fail("oversized reply")
        try:
            reply = self._loads(bytes(self._recv(hlen)))
        except (ValueError, StopIteration):
            reply = None
        if not isinstance(reply, dict) or reply.get("t") != "fs_reply":
            self._fail("malformed reply")
        if reply.get("id") != request.id:  # replies come in order: anything else is a bug
            self._fail("reply out of order")
        into = request.into
        if into is not None:
            if plen > len(into):
                self._fail("reply larger than the request")
            self._recv_into(into[:plen])
            data: Any = plen
        elif request.spare and plen:
            if plen > request.cost:
                self._fail("reply larger than the request")
            spares = self._spares
            data = memoryview(spares.pop() if spares else bytearray(request.cost))[:plen]
            self._recv_into(data)
        else:
            data = self._recv(plen) if plen else b""
        self._waiting.popleft()
        self._in_flight -= request.cost
        self._seen = request.id
        request.reply, request.data, request.done = reply, data, True
        if request.errors is not None and reply.get("ok") is not True:
            request.errors.append(reply)

    def _fail(self, why: str) -> None:
        # The stream is out of step now: no later reply could be trusted.
        self.broken = f"lost the home node's file proxy ({why})"
        raise ConnectionError(self._reset, self.broken)

    def _io(self, fn: Any, views: list[memoryview]) -> int | None:
        """``fn`` (readv or writev) on the socket: bytes moved, or None if it would block."""
        try:
            return fn(self.fd, views)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            raise

    def _send(self, views: list[memoryview]) -> None:
        while views:
            n = self._io(self._writev, views)
            if n is None:
                self._await_room()
                continue
            while n:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0], n = views[0][n:], 0

    def _await_room(self) -> None:
        """Wait until the socket takes more; meanwhile read the replies that come, which
        home may be unable to send until we do."""
        reading = bool(self._waiting)
        self._poller.modify(self.fd, self._out | (self._in if reading else 0))
        try:
            events = 0
            for _, happened in self._poller.poll():
                events |= happened
        finally:
            self._poller.modify(self.fd, self._in)
        if reading and events & self._in and not events & self._out:
            self._pump()

    def _recv_into(self, view: memoryview) -> None:
        while view:
            n = self._io(self._readv, [view])
            if n is None:
                self._poller.poll()
                continue
            if not n:
                self._fail("connection closed")
            view = view[n:]

    def _recv(self, n: int) -> bytearray:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return buf


def deferring(handler: Any, channel: Channel) -> Any:
    """``handler`` (a Python signal handler) wrapped so that, when it fires in a thread that
    is in the middle of a request on ``channel``, it runs just after the request instead."""
    def deferred(signum: int, frame: Any) -> Any:
        if channel.busy():
            channel.pending.append((handler, signum, frame))
            return None
        return handler(signum, frame)
    deferred.mosrun_handler = handler  # type: ignore[attr-defined]  # what getsignal() shows
    return deferred
