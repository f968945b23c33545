"""Home files: the raw file over a handle in mosrun that takes ``FileIO``'s place.

:func:`mosrun.runtime.fileopen.open` puts the usual buffered and text layers over a
:class:`HomeFileIO`. Bulk I/O streams: writes under a buffer go out without waiting for their
replies (a failure is raised later, by the next operation on the file, ``flush()`` or
``close()``), and sequential reads are read ahead, within a bounded window. Standard library
only, and cheap to import.
"""

from __future__ import annotations

import errno
import io
import os
from _collections import deque  # what collections.deque is, without importing collections

from mosrun.runtime import proxy
from mosrun.runtime.channel import AHEAD_CHUNK, AHEAD_FILE, AHEAD_TOTAL, CHUNK

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

_real_open = io.open


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
    ``osproxy``'s ``os.open`` and for Python sources read "rb" (see there)."""

    def __init__(self, handle: int | None, name: Any, mode: str, reply: dict[str, Any],
                 path: str | None, fd: int | None = None, closefd: bool = True) -> None:
        super().__init__()
        self.name, self.mode, self._h, self._path = name, mode, handle, path
        self._fd, self._closefd, self._close_fd = fd, closefd, os.close
        self._chan, self._pos = proxy.chan, reply.get("pos")
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
        # A copy restarted from a checkpoint writes again what it wrote after that checkpoint:
        # up to here, an appended file already holds it; such writes are compared, not repeated.
        self._replay_until = 0

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
        if self._pos is not None and self._pos < self._replay_until:
            size = len(view)
            view = self._replayed(view)
            if not len(view):
                return size
            written = self.write(view)
            return size - len(view) + written
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

    def _replayed(self, view: memoryview) -> memoryview:
        """The part of a replayed write the file holds already is compared and skipped (a
        task that is not deterministic gets one line saying so, and its new bytes); returns
        the rest, beyond what the file held."""
        assert self._pos is not None
        n = min(len(view), self._replay_until - self._pos)
        there = bytearray(n)
        self._reseek = True
        self._resync()
        got = 0
        while got < n:
            _, k = self._rpc("read", {"n": min(n - got, CHUNK)}, into=memoryview(there)[got:n])
            if not k:
                break
            got += k
        if there[:got] != view[:n]:
            os.write(2, f"mosrun: task {os.environ.get('MOSIX_TASK_ID', '')}: its writes to {self.name!r} after "
                        "its restart differ from what it wrote before (it is not deterministic from its "
                        "checkpoint); the file takes the new bytes\n".encode())
            self._replay_until = 0
            return view
        self._pos += n
        self._reseek = True
        return view[n:]

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
                self._snapshot = _snapshot(proxy.fetch(self._path))
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
                        self._close_fd(self._fd)  # osproxy's os.close: the handle goes with it
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
