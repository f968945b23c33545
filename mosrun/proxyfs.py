"""Task side of the home file proxy: the channel to mosrun, where a path lives, home files.

A task runs on another node but its files are at home. Relative paths (taken against a
virtual working directory that starts as the user's home working directory) and absolute paths
under the home roots (that directory and the script's) are served by ``mosrun`` on the home
node; the protocol is described in :mod:`mosrun.homefs`. Other paths, paths under this
interpreter's own prefixes, and file descriptors stay local.

:func:`open` opens home files as :class:`HomeFileIO` (a raw file over a handle in mosrun) under
the usual buffered and text layers; :mod:`mosrun.proxyos` patches the ``os`` calls and installs
everything. Standard library only, and cheap to import: ``runtime.py`` loads it by path.
"""

from __future__ import annotations

import _thread
import errno
import gc
import io
import os
import posixpath

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

CHUNK = 4 << 20            # largest read/write payload per request
BUFFER_SIZE = 1 << 20      # buffer of a home file: big, so throughput is not round-trip bound
MAX_HEADER, MAX_PAYLOAD = 1 << 20, 16 << 20   # as mosrun.frames

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


class Channel:
    """Requests to the home mosrun over the inherited daemon socket, one at a time.

    Frames are those of :mod:`mosrun.frames`, written here with ``os.writev``/``os.readv`` so
    that neither ``socket`` nor ``json`` is imported at task start. An exchange is never cut in
    the middle: signal handlers that fire in a thread during its request are held in
    :attr:`pending` and run just after it (see :func:`deferring`), as they would wait for a
    local file system call, and the cyclic GC waits too, so that no finaliser closes a file
    from inside a request. The channel keeps what it needs as attributes, so that files still
    flush while the interpreter shuts down and module globals are gone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken: str | None = None
        self.pending: list[tuple[Any, int, Any]] = []   # (handler, signum, frame)
        self._lock = _thread.allocate_lock()
        self._owner: int | None = None
        self._main = _thread.get_ident()  # Python signal handlers only run in this thread
        self._serial = 0
        # Made now, before the import hook is installed: importing _json later, from inside a
        # request, would ask that hook, hence this channel, for it.
        self._dumps, self._loads = _codec()
        self._ident, self._readv, self._writev = _thread.get_ident, os.readv, os.writev
        self._gc, self._limits, self._reset = gc, (MAX_HEADER, MAX_PAYLOAD), errno.ECONNRESET

    def busy(self) -> bool:
        """Whether the calling thread is in the middle of a request."""
        return self._owner == self._ident()

    def call(self, op: str, args: dict[str, Any], payload: Any = b"",
             into: memoryview | None = None) -> tuple[dict[str, Any], Any]:
        """Send one request and wait for its reply: (header, payload bytes), or (header, byte
        count) when the payload was read straight ``into`` the caller's buffer."""
        if self.broken:
            raise ConnectionError(self._reset, self.broken)
        if self.busy():
            raise RuntimeError("a home file operation started inside another one")
        try:
            with self._lock:
                self._serial += 1
                header = {"t": "fs", "op": op, "id": self._serial}
                header.update(args)
                head = self._dumps(header)  # may fail, harmlessly: nothing is sent yet
                prefix = len(head).to_bytes(4, "big") + len(payload).to_bytes(4, "big")
                views = [memoryview(prefix + head)]
                if len(payload):
                    views.append(memoryview(payload))
                self._owner = self._ident()
                collecting = self._gc.isenabled()
                try:
                    if collecting:
                        self._gc.disable()
                    return self._transfer(views, into)
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

    def _transfer(self, views: list[memoryview],
                  into: memoryview | None) -> tuple[dict[str, Any], Any]:
        self._send(views)
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
        if into is not None:
            if plen > len(into):
                self._fail("reply larger than the request")
            self._recv_into(into[:plen])
            return reply, plen
        return reply, bytes(self._recv(plen)) if plen else b""

    def _fail(self, why: str) -> None:
        # The stream is out of step now: no later reply could be trusted.
        self.broken = f"lost the home node's file proxy ({why})"
        raise ConnectionError(self._reset, self.broken)

    def _io(self, fn: Any, views: list[memoryview]) -> int:
        try:
            return fn(self.fd, views)
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            raise

    def _send(self, views: list[memoryview]) -> None:
        while views:
            n = self._io(self._writev, views)
            while n:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0], n = views[0][n:], 0

    def _recv_into(self, view: memoryview) -> None:
        while view:
            n = self._io(self._readv, [view])
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
fds: dict[int, tuple[int, bool]] = {}   # placeholder descriptor -> (home handle, seekable)
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
        self._snapshot: Any = None

    def _rpc(self, op: str, args: dict[str, Any], payload: Any = b"",
             into: memoryview | None = None) -> tuple[dict[str, Any], Any]:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        args["h"] = self._h
        reply, data = self._chan.call(op, args, payload, into)
        if reply.get("ok") is not True:
            code = reply.get("errno")
            raise OSError(code if isinstance(code, int) else errno.EIO,
                          reply.get("strerror") or "home file error")
        return reply, data

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

    def readinto(self, buffer: Any) -> int:
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(buffer).cast("B")
        want = min(len(view), CHUNK)
        if not want:
            return 0
        _, n = self._rpc("read", {"n": want}, into=view[:want])
        if self._pos is not None:
            self._pos += n
        return n

    def readall(self) -> bytes:
        # The inherited one reads 8 KiB per call, a round trip each: read big chunks straight
        # into buffers of their own, joined once at the end. (Reading into one BytesIO buffer
        # through getbuffer() saves a copy, but an interrupt in the middle leaves the export
        # in traceback frames, and CPython 3.12.1 then crashes collecting them at exit.)
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        chunks = []
        while True:
            buf = bytearray(CHUNK)
            n = self.readinto(buf)
            if not n:
                return b"".join(chunks)
            chunks.append(memoryview(buf)[:n] if n < CHUNK else buf)

    def write(self, data: Any) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        view, done = memoryview(data).cast("B"), 0
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
        self._pos = self._rpc("seek", {"pos": pos, "whence": whence})[0]["pos"]
        return self._pos

    def tell(self) -> int:
        return self._pos if self._pos is not None and not self.closed else self.seek(0, 1)

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        self._rpc("ftruncate", {"size": size})
        return size

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
            if self._fd is not None:
                if self._closefd:
                    self._close_fd(self._fd)  # proxyos's os.close: the handle goes with it
            elif not self._chan.broken:
                self._rpc("close", {})
        finally:
            if self._snapshot is not None:
                self._snapshot.close()
            super().close()


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
            buffer: Any = io.BufferedRandom(raw, buffering)
        elif raw.mode[0] == "r":
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
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
        handle, seekable = fds[file]
        raw = HomeFileIO(handle, file, raw_mode, {"seekable": seekable}, None, file, closefd)
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
