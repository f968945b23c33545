"""Task side of the home file proxy: the channel to mosrun, where a path lives, home files.

A task runs on another node but its files are at home. Relative paths (taken against a
virtual working directory that starts as the user's home working directory) and absolute paths
under the home roots (that directory and the script's) are served by ``mosrun`` on the home
node; the protocol is described in :mod:`mosrun.homefs`. Other paths, paths under this
interpreter's own prefixes, and file descriptors stay local.

:func:`open` opens home files as :class:`HomeFileIO` (a raw file over a handle in mosrun) under
the usual buffered and text layers; :mod:`mosrun.proxyos` patches the ``os`` calls and installs
everything. Bulk I/O streams: writes under a buffer go out without waiting for their replies
(a failure is raised later, by the next operation on the file, ``flush()`` or ``close()``), and
sequential reads are read ahead, within a bounded window (see :class:`HomeFileIO`). Standard
library only, and cheap to import: ``runtime.py`` loads it by path.
"""

from __future__ import annotations

import _thread
import errno
import gc
import io
import os
import posixpath
from _collections import deque  # what collections.deque is, without importing collections

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

CHUNK = 4 << 20            # largest read/write payload per request
BUFFER_SIZE = 1 << 20      # buffer of a home file: big, so throughput is not round-trip bound
MAX_HEADER, MAX_PAYLOAD = 1 << 20, 16 << 20   # as mosrun.frames
WINDOW = 16 << 20          # payload bytes (either way) of the requests awaiting replies
MAX_WAITING = 64           # requests awaiting replies: bounds what home holds for us
AHEAD_CHUNK = 1 << 20      # one read-ahead request: small enough to keep both ends busy
AHEAD_FILE = 16 << 20      # most one file reads ahead
AHEAD_TOTAL = 32 << 20     # most all files together hold read ahead (asked, not handed out)

_real_open, _real_open_code = io.open, io.open_code


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
    which the node opened for this task (``mosrun.dataplane``).

    Frames are those of :mod:`mosrun.frames`, written here with ``os.writev``/``os.readv`` so
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


# -- where a path lives ----------------------------------------------------------------------

chan: Channel = None  # type: ignore[assignment]  # set by proxyos.install()
CWD = "/"            # the task's working directory, as os.getcwd() shows it
cwd_home = True      # whether CWD is on the home node
roots: tuple[str, ...] = ()    # home directory prefixes, each ending in "/"
local: tuple[str, ...] = ()    # prefixes that stay local even under a home root
fds: dict[int, tuple[int, bool, Any, bool]] = {}
"""placeholder descriptor -> (home handle, seekable, file identity, opened O_APPEND)"""
index: dict[str, Any] = {}     # import finder: home directory -> {module name: kind}
task_env: dict[str, str] = {}  # the MOSIX_* variables the daemon passed (plumbing removed from environ)


def prefix(path: str) -> str:
    """``path`` normalised, ending in "/", as :data:`roots` and :data:`local` hold them."""
    return posixpath.normpath(path).rstrip("/") + "/"


def home_path(path: Any) -> str | None:
    """The absolute home path that ``path`` names, or None when the call stays local."""
    if path.__class__ is not str:
        if isinstance(path, int):
            return None
        try:
            path = os.fspath(path)
        except TypeError:
            return None  # the real call raises its usual TypeError
        if isinstance(path, bytes):
            path = os.fsdecode(path)
    if not path or "\0" in path:
        return None  # the real call raises its usual error
    if path[0] != "/":
        return CWD.rstrip("/") + "/" + path if cwd_home else None
    norm = posixpath.normpath(path) + "/"
    return path if norm.startswith(roots) and not norm.startswith(local) else None


_CHANGES = frozenset(("remove", "rmdir", "mkdir", "makedirs", "rename", "replace"))


def call(op: str, args: dict[str, Any], user: Any = None, user2: Any = None,
         payload: Any = b"", into: memoryview | None = None) -> tuple[dict[str, Any], Any]:
    """One request; a failure raises the OSError the local call would have raised, naming the
    paths as the caller wrote them (``user``, ``user2``)."""
    if op in _CHANGES or (op == "open" and "O_CREAT" in args["flags"]):
        index.clear()  # the import finder must see new or removed modules
    if op == "truncate" or (op == "open" and "O_TRUNC" in args["flags"]):
        chan.touch(None)  # what files read ahead may be stale now
    reply, data = chan.call(op, args, payload, into)
    if reply.get("ok") is not True:
        code = reply.get("errno")
        code = code if isinstance(code, int) else errno.EIO
        text = reply.get("strerror") or os.strerror(code)
        name = _user_name(reply.get("filename"), args.get("path", args.get("src")), user)
        name2 = _user_name(reply.get("filename2"), args.get("dst"), user2)
        raise OSError(code, text, name, None, name2)
    return reply, data


def _user_name(got: Any, sent: Any, user: Any) -> Any:
    if got is None or user is None:
        return got
    user = os.fspath(user)
    if got == sent:
        return user
    base = CWD.rstrip("/") + "/"
    if user[:1] not in ("/", b"/") and got.startswith(base):
        got = got[len(base):]  # an intermediate directory of a relative path (makedirs)
    return os.fsencode(got) if isinstance(user, bytes) else got


def fetch(path: str) -> bytes:
    """The whole content of a home file (script and module sources)."""
    chunks, offset = [], 0
    while True:
        reply, data = call("get", {"path": path, "offset": offset}, path)
        chunks.append(data)
        offset += len(data)
        if not data or offset >= reply.get("size", 0):
            return b"".join(chunks)


# -- home files ---------------------------------------------------------------------------------

class HomeFileIO(io.RawIOBase):
    """The raw layer of a file open on the home node (a handle in mosrun), in the place of
    ``FileIO``: :func:`open` puts the usual buffered and text layers over it.

    Streaming, so that bulk I/O is not bound by the round trip to home:

    * Write-behind: under a buffer (what :func:`open` gives unless ``buffering=0``), a write is
      sent without waiting for its reply; at most :data:`WINDOW` bytes are on their way, and
      a writer faster than home blocks there. A failure comes back later and is raised, once,
      by the next operation on the file, by ``flush()`` (which waits until home has written
      everything) or by ``close()``, as ``OSError`` naming the file, much as buffered local
      I/O may report a full disk only when it flushes. Writes to a regular file carry their
      offset, so a failed one never shifts the data written after it.
    * Read-ahead: after two full reads in a row from where the last one ended, the file asks
      for the next chunks before they are needed, up to :data:`AHEAD_FILE` bytes (together
      at most :data:`AHEAD_TOTAL` for all files), and hands them out as they come. A seek
      elsewhere, a write or a truncation drops what was read ahead, as does a change the
      task makes to the same file through another handle. Chunks are matched to their
      requests by id, so nothing stale is ever returned; an end of file met while reading
      ahead is checked again before it is reported.
    * Lazy seeks: a seek on a regular file only moves the position kept here; home follows
      when a request needs its position.

    ``fileno()`` is unsupported, except for files opened from a descriptor of
    ``proxyos``'s ``os.open`` and for Python sources read "rb" (see there)."""

    def __init__(self, handle: int | None, name: Any, mode: str, reply: dict[str, Any],
                 path: str | None, fd: int | None = None, closefd: bool = True) -> None:
        super().__init__()
        self.name, self.mode, self._h, self._path = name, mode, handle, path
        self._fd, self._closefd, self._close_fd = fd, closefd, os.close
        self._chan, self._pos = chan, reply.get("pos")
        self._seekable = bool(reply.get("seekable"))
        self._readable = "r" in mode or "+" in mode
        self._writable = "r" not in mode or "+" in mode
        self._append = mode[0] == "a" or bool(reply.get("append"))
        ident = reply.get("file")
        self._ident = tuple(ident) if isinstance(ident, list) else None
        # Whether reads and writes may go by the position kept here (read-ahead, positioned
        # writes, lazy seeks): not through a descriptor, as os.lseek() and os.read() on it see
        # home's position, which must then be right at all times.
        self._exact = self._seekable and fd is None
        self._behind = False      # a buffer sits on top (set by _layers): writes need not wait
        self._errors: list[dict[str, Any]] = []   # failures of requests not waited for
        self._last = 0            # id of the newest such request
        self._covered = 0         # failures of requests up to this id were reported already
        self._reseek = False      # home's position may differ from _pos
        self._ahead: Any = deque()  # read-ahead requests, in file order
        self._taken = 0           # bytes of the first one already handed out
        self._held = 0            # bytes asked for by those requests and not handed out
        self._target = 0          # how far to read ahead now: grows while the reader keeps up
        self._since: Any = None   # the channel's change counts when reading ahead started
        self._streak = False      # the last read was full and sequential: read ahead next
        self._eof = False         # a short chunk came back: ask for no more
        self._snapshot: Any = None

    # -- state checks and late errors -------------------------------------------------------

    def _ready(self, reading: bool = False, writing: bool = False) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if reading and not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        if writing and not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        if self._errors:
            self._raise_late()

    def _raise_late(self) -> None:
        """Raise the first failure of the requests not waited for, if any is new: one report
        covers all the writes that were on their way when it is made."""
        errors, covered = self._errors, self._covered
        reply = next((r for r in errors if r.get("id", 0) > covered), None)
        errors.clear()
        if reply is not None:
            self._covered = self._last
            code = reply.get("errno")
            raise OSError(code if isinstance(code, int) else errno.EIO,
                          reply.get("strerror") or "home file error", self.name)

    def _rpc(self, op: str, args: dict[str, Any], payload: Any = b"",
             into: memoryview | None = None) -> tuple[dict[str, Any], Any]:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        args["h"] = self._h
        reply, data = self._chan.call(op, args, payload, into)
        if reply.get("ok") is not True:
            raise _error(reply)
        return reply, data

    def _post(self, op: str, args: dict[str, Any], payload: Any = b"") -> None:
        """Send a request whose failure is raised later (see :meth:`_raise_late`)."""
        args["h"] = self._h
        request = self._chan.post(op, args, payload, self._errors, len(payload))
        assert request is not None
        self._last = request.id

    def _resync(self) -> None:
        """Bring home's position to ours before a request that depends on it."""
        if self._reseek:
            self._post("seek", {"pos": self._pos, "whence": 0})
            self._reseek = False

    def _checked(self, answer: bool) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return answer

    def readable(self) -> bool:
        return self._checked(self._readable)

    def writable(self) -> bool:
        return self._checked(self._writable)

    def seekable(self) -> bool:
        return self._checked(self._seekable)

    def isatty(self) -> bool:
        return self._checked(False)

    # -- reading -------------------------------------------------------------------------------

    def readinto(self, buffer: Any) -> int:
        # As read(2) on a regular file: all that was asked for, unless the file ends first.
        self._ready(reading=True)
        view = memoryview(buffer).cast("B")
        done, fresh = 0, False
        while done < len(view):
            if not self._ahead and self._streak:
                fresh = self._start_ahead() or fresh
            if not self._ahead:
                want = min(len(view) - done, CHUNK)
                n = self._read_now(view[done:])
                done += n
                if n < want or not self._exact:
                    break  # the end of the file; or a pipe, which gives what it has
                continue
            try:
                chunk = self._chunk()
            except OSError:
                if done:  # as read(2): what came before the failure; the next read meets it
                    return done
                raise
            if chunk is None:
                continue  # made stale by a change: read again
            if not chunk:
                # The end of the file, as home saw it when it read this chunk. Only an end met
                # just now is reported as such: a file may grow while its reader is busy.
                self._drop_ahead()
                self._streak = False  # a reader at the end (waiting for more, say) asks once
                if done or fresh:
                    break
                continue
            n = min(len(view) - done, len(chunk))
            view[done:done + n] = chunk[:n]
            done += n
            if self._advance(n):
                break
        return done

    def readall(self) -> bytes:
        # The inherited one reads 8 KiB per call. Read ahead at once instead (all of the file
        # is wanted) and keep the chunks as they came, joined once at the end.
        self._ready(reading=True)
        parts: list[Any] = []
        fresh = False
        while True:
            if not self._ahead and self._exact and self._pos is not None:
                fresh = self._start_ahead() or fresh
            if self._ahead:
                chunk = self._chunk()
                if chunk is None:
                    continue
                if not chunk:
                    self._drop_ahead()
                    if fresh:
                        return b"".join(parts)
                    fresh = True  # the next end of file met is a fresh one
                    continue
                parts.append(chunk)
                self._advance(len(chunk), kept=True)
                continue
            buf = bytearray(CHUNK)  # not seekable, or no room to read ahead: one at a time
            n = self._read_now(memoryview(buf))
            if not n:
                return b"".join(parts)
            parts.append(memoryview(buf)[:n] if n < CHUNK else buf)

    def _read_now(self, view: memoryview) -> int:
        """Read from home's position, waiting for the reply."""
        self._resync()
        want = min(len(view), CHUNK)
        _, n = self._rpc("read", {"n": want}, into=view[:want])
        if self._pos is not None:
            self._pos += n
        self._streak = n == want and self._exact and self._pos is not None
        return n

    def _start_ahead(self) -> bool:
        """Start reading ahead from our position; whether anything was asked for."""
        self._resync()
        self._eof, self._target = False, 2 * AHEAD_CHUNK
        self._since = self._chan.changes(self._ident)
        self._fill()
        return bool(self._ahead)

    def _fill(self) -> None:
        """Ask for more chunks, as far as the target, the budgets and the window allow."""
        if self._eof:
            return
        for request in self._ahead:
            if request.done and len(request.data) < request.cost:
                return  # home met the end of the file: asking further would be in vain
        chan, args = self._chan, {"h": self._h, "n": AHEAD_CHUNK}
        while self._held < self._target:
            if not chan.reserve(AHEAD_CHUNK, AHEAD_TOTAL):
                return
            request = chan.post("read", args, b"", None, AHEAD_CHUNK, block=False, spare=True)
            if request is None:
                chan.unreserve(AHEAD_CHUNK)
                return
            self._ahead.append(request)
            self._held += AHEAD_CHUNK

    def _chunk(self) -> memoryview | None:
        """What is left of the first chunk read ahead, once it has come (empty: home met the
        end of the file); None when a change made all of them stale and they were dropped."""
        if self._chan.changes(self._ident) != self._since:
            self._drop_ahead()
            return None
        request = self._ahead[0]
        if not request.done:
            self._chan.wait(request.id)
        if request.reply.get("ok") is not True:
            self._drop_ahead()
            raise _error(request.reply)
        return memoryview(request.data)[self._taken:]

    def _advance(self, n: int, kept: bool = False) -> bool:
        """``n`` bytes of the first chunk were handed out (``kept``: as a view of it, not
        copied); whether that was up to where home met the end of the file."""
        self._taken += n
        self._pos += n
        request = self._ahead[0]
        size = len(request.data)
        if self._taken < size:
            return False
        self._ahead.popleft()
        self._taken = 0
        self._held -= request.cost
        self._chan.unreserve(request.cost)
        if not kept:
            self._chan.recycle(request)
        if size < request.cost:
            self._eof = True
            return True
        self._target = min(2 * self._target, AHEAD_FILE)  # the reader keeps up: go further
        self._fill()
        return False

    def _drop_ahead(self) -> None:
        """Give up what was read ahead; home's position is then somewhere past ours."""
        if not self._ahead:
            return
        if self._taken or any(not r.done or r.data for r in self._ahead):
            self._reseek = True
        self._ahead.clear()  # replies still to come are read and thrown away by the channel
        self._taken = 0
        self._chan.unreserve(self._held)
        self._held = 0

    # -- writing, seeking ---------------------------------------------------------------------

    def write(self, data: Any) -> int:
        self._ready(writing=True)
        view = memoryview(data).cast("B")
        if not len(view):
            return 0
        self._drop_ahead()
        self._streak = False
        self._chan.touch(self._ident)  # what other handles read ahead from this file is stale
        if not self._behind:
            return self._write_now(view)
        at = self._pos if self._exact and not self._append else None
        if at is None:
            self._resync()
        for start in range(0, len(view), CHUNK):
            part = view[start:start + CHUNK]
            if at is None:
                self._post("write", {"all": True}, part)
            else:
                self._post("write", {"at": at + start}, part)
        if at is not None:
            self._pos = at + len(view)
            self._reseek = True  # positioned writes leave home's position where it was
        else:
            self._pos = None  # an appending or unseekable file: home knows its position
        return len(view)

    def _write_now(self, view: memoryview) -> int:
        """Write as FileIO does: wait, and return what home wrote."""
        self._resync()
        done = 0
        while done < len(view):
            part = view[done:done + CHUNK]
            reply, _ = self._rpc("write", {}, payload=part)
            done += reply["n"]
            self._pos = reply.get("pos")
            if reply["n"] < len(part):
                break
        return done

    def seek(self, pos: int, whence: int = 0) -> int:
        if not isinstance(pos, int) or not isinstance(whence, int):
            raise TypeError("an integer is required")
        self._ready()
        if self._exact and self._pos is not None and whence in (0, 1):
            target = pos if whence == 0 else self._pos + pos
            if 0 <= target < 1 << 63:  # lseek(2) cannot fail then: home follows when it must
                if target != self._pos:
                    self._drop_ahead()
                    self._streak = False
                    self._pos, self._reseek = target, True
                return target
        self._drop_ahead()
        self._streak = False
        if whence == 1 and self._pos is not None:
            pos, whence = self._pos + pos, 0  # ours is the position, not home's
        self._pos = self._rpc("seek", {"pos": pos, "whence": whence})[0]["pos"]
        self._reseek = False
        return self._pos

    def tell(self) -> int:
        self._ready()
        return self._pos if self._pos is not None else self.seek(0, 1)

    def truncate(self, size: int | None = None) -> int:
        self._ready(writing=True)
        size = self.tell() if size is None else size
        self._drop_ahead()
        self._chan.touch(self._ident)
        self._rpc("ftruncate", {"size": size})
        return size

    def flush(self) -> None:
        """Wait until home has performed this file's writes; raise a failure among them."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._last and not self._chan.broken:
            self._chan.wait(self._last)
        if self._errors:
            self._raise_late()

    def fsync(self) -> None:
        """What ``os.fsync(f)`` does for a home file: once home has performed the writes
        already handed to this raw file, its own fsync of the file."""
        self.flush()
        self._rpc("fsync", {})

    def fileno(self) -> int:
        if self._fd is not None:
            return self._fd
        # CPython's traceback printer opens a source "rb" and needs a real descriptor to read
        # its encoding: a Python source gets an in-memory snapshot, so tracebacks (of the main
        # program, of threads, of unraisable errors) show home source lines.
        if self._path and self.mode == "rb" and self._path.endswith(".py") and not self.closed:
            if self._snapshot is None:
                self._snapshot = _snapshot(fetch(self._path))
            return self._snapshot.fileno()
        raise io.UnsupportedOperation("fileno")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._ahead.clear()
            self._chan.unreserve(self._held)
            self._held = 0
            failure = None
            try:
                if self._last and not self._chan.broken:
                    self._chan.wait(self._last)  # (a descriptor left open is not closed below)
                if self._fd is not None:
                    if self._closefd:
                        self._close_fd(self._fd)  # proxyos's os.close: the handle goes with it
                elif not self._chan.broken:
                    self._rpc("close", {})
            except OSError as exc:
                failure = exc
            if self._errors:
                self._raise_late()
            if failure is not None:
                raise failure
        finally:
            self._last = 0  # nothing left to wait for when IOBase.close() flushes
            if self._snapshot is not None:
                self._snapshot.close()
            super().close()


def _error(reply: dict[str, Any]) -> OSError:
    code = reply.get("errno")
    return OSError(code if isinstance(code, int) else errno.EIO,
                   reply.get("strerror") or "home file error")


class BufferedWriter(io.BufferedWriter):
    """``io.BufferedWriter`` whose ``flush()`` also waits until home has written the data, and
    raises what failed there (see :class:`HomeFileIO`)."""

    __module__ = "_io"  # type(f) and repr(f) show what they show for a local file

    def flush(self) -> None:
        super().flush()
        self.raw.flush()

    def __repr__(self) -> str:
        return _buffered_repr(self, "_io.BufferedWriter")


class BufferedRandom(io.BufferedRandom):
    """``io.BufferedRandom`` whose ``flush()`` waits as :class:`BufferedWriter`'s does."""

    __module__ = "_io"

    def flush(self) -> None:
        super().flush()
        self.raw.flush()

    def __repr__(self) -> str:
        return _buffered_repr(self, "_io.BufferedRandom")


def _buffered_repr(buffer: Any, kind: str) -> str:
    try:
        name = buffer.name
    except AttributeError:  # ValueError too propagates, as from the C type's repr
        return f"<{kind}>"
    return f"<{kind} name={name!r}>"


def _snapshot(data: bytes) -> Any:
    if hasattr(os, "memfd_create"):
        snap = _real_open(os.memfd_create("mosrun-source", os.MFD_CLOEXEC), "w+b")
    else:
        import tempfile
        snap = tempfile.TemporaryFile()
    snap.write(data)
    snap.flush()
    snap.seek(0)
    return snap


_MODE_FLAGS = {"r": ["O_RDONLY"], "w": ["O_WRONLY", "O_CREAT", "O_TRUNC"],
               "x": ["O_WRONLY", "O_CREAT", "O_EXCL"], "a": ["O_WRONLY", "O_CREAT", "O_APPEND"]}


def _check_mode(mode: Any, encoding: Any, errors: Any, newline: Any) -> tuple[str, bool]:
    """Validate ``mode`` as io.open does, with its messages: (FileIO-style mode, text?)."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    chars = set(mode)
    if chars - set("axrwb+t") or len(mode) > len(chars):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = [c for c in "xrwa" if c in chars]
    if "t" in chars and "b" in chars:
        raise ValueError("can't have text and binary mode at once")
    if len(kinds) > 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    binary = "b" in chars
    for value, what in ((encoding, "an encoding"), (errors, "an errors"), (newline, "a newline")):
        if binary and value is not None:
            raise ValueError(f"binary mode doesn't take {what} argument")
    if not kinds:  # this one comes from FileIO, after io.open's own checks
        raise ValueError("Must have exactly one of create/read/write/append mode and at most "
                         "one plus")
    raw_mode = {"r": "rb", "w": "wb", "x": "xb", "a": "ab"}[kinds[0]]
    return (raw_mode + "+" if "+" in chars else raw_mode), not binary


def _layers(raw: HomeFileIO, mode: str, text: bool, buffering: int, encoding: Any,
            errors: Any, newline: Any) -> Any:
    """What io.open puts over a raw file."""
    try:
        line_buffering = buffering == 1
        if buffering == 1 and not text:
            import warnings
            warnings.warn("line buffering (buffering=1) isn't supported in binary mode, the "
                          "default buffer size will be used", RuntimeWarning, 4)
        if buffering == 1 or buffering < 0:
            buffering = BUFFER_SIZE
        if buffering == 0:
            if text:
                raise ValueError("can't have unbuffered text I/O")
            return raw
        if "+" in raw.mode:
            buffer: Any = BufferedRandom(raw, buffering)
        elif raw.mode[0] == "r":
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = BufferedWriter(raw, buffering)
        raw._behind = True  # the buffer's flush() and close() wait for the writes
        if not text:
            return buffer
        wrapper = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
        wrapper.mode = mode
        return wrapper
    except BaseException:
        raw.close()
        raise


def open(file: Any, mode: str = "r", buffering: int = -1, encoding: str | None = None,
         errors: str | None = None, newline: str | None = None, closefd: bool = True,
         opener: Any = None) -> Any:
    """``open()``: a home path is opened on the home node, anything else as usual."""
    if file.__class__ is int and file in fds:
        raw_mode, text = _check_mode(mode, encoding, errors, newline)
        handle, seekable, ident, append = fds[file]
        raw = HomeFileIO(handle, file, raw_mode, {"seekable": seekable, "file": ident,
                                                  "append": append}, None, file, closefd)
        return _layers(raw, mode, text, buffering, encoding, errors, newline)
    home = None if opener is not None else home_path(file)
    if home is None:
        return _real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    raw_mode, text = _check_mode(mode, encoding, errors, newline)
    if not isinstance(buffering, int):
        raise TypeError("'buffering' must be an integer")
    if not closefd:
        raise ValueError("Cannot use closefd=False with file name")
    flags = list(_MODE_FLAGS[raw_mode[0]])
    if "+" in raw_mode:
        flags[0] = "O_RDWR"
    reply, _ = call("open", {"path": home, "flags": flags, "perm": 0o666, "nodir": True}, file)
    raw = HomeFileIO(reply["h"], os.fspath(file), raw_mode, reply, home)
    return _layers(raw, mode, text, buffering, encoding, errors, newline)


def open_code(path: str) -> Any:
    """``io.open_code()``: home paths (runpy.run_path, importers) are read from home."""
    home = home_path(path) if isinstance(path, str) else None
    return _real_open_code(path) if home is None else open(path, "rb")
