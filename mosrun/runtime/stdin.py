"""The task's stdin, counted, so that a move resumes it exactly where the program left it.

A task's stdin is a pipe its node fills from home. Python's own ``sys.stdin`` reads ahead
into buffers that a checkpoint does not hold, so after a move the program would miss what
they held. :class:`TextStdin` (``sys.stdin``) and :class:`BinaryStdin` (``sys.stdin.buffer``)
read the same pipe through one buffer of ours and count what the program has taken:
:func:`taken`. A checkpoint records that offset; the home then sends the moved copy its stdin
from there on, and :func:`resume_at` tells the new copy where its pipe starts.

Reading fd 0 directly (``os.read(0, ...)``) bypasses the count. Standard library only.
"""

from __future__ import annotations

import codecs
import io
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Iterator

CHUNK = 64 * 1024


class _Source:
    """fd 0 and what has been read from it but not taken by the program."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""  # bytes, not a bytearray: a slice of it is one copy
        self.pos = 0
        self.start = 0  # the stream offset this copy's pipe starts at (after a move)
        self.read_total = 0
        self.eof = False

    def fill(self, size: int = CHUNK) -> bool:
        """Read once more from the pipe; False at its end."""
        if self.eof:
            return False
        while True:
            try:
                data = os.read(self.fd, max(size, CHUNK))
                break
            except InterruptedError:
                continue
        if not data:
            self.eof = True
            return False
        self.read_total += len(data)
        self.buf = self.buf[self.pos:] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    @property
    def held(self) -> int:
        return len(self.buf) - self.pos

    def take(self, size: int) -> bytes:
        data = self.buf[self.pos:self.pos + size]
        self.pos += len(data)
        return data

    def line(self, limit: int) -> bytes:
        """Up to and including the next newline (or ``limit`` bytes, or the end)."""
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                return self.take(min(end + 1 - self.pos, limit) if limit >= 0 else end + 1 - self.pos)
            if 0 <= limit <= self.held or not self.fill():
                return self.take(limit if limit >= 0 else self.held)


class _Stdin:
    """What both layers of the task's stdin say of themselves: fd 0, readable, not a tty."""

    _src: _Source

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._src.fd

    def isatty(self) -> bool:
        return False

    def detach(self) -> io.RawIOBase:
        raise io.UnsupportedOperation("the stdin of a mosix task cannot be detached")


class BinaryStdin(_Stdin, io.BufferedIOBase):
    """``sys.stdin.buffer``: the pipe's bytes, counted."""

    def __init__(self, source: _Source) -> None:
        super().__init__()
        self._src = source

    def read(self, size: int | None = -1) -> bytes:
        src = self._src
        if size is None or size < 0:
            parts = [src.take(src.held)]
            while src.fill():
                parts.append(src.take(src.held))
            return b"".join(parts)
        while src.held < size and src.fill(size - src.held):
            pass
        return src.take(size)

    def read1(self, size: int = -1) -> bytes:
        src = self._src
        if not src.held:
            src.fill(size if size > 0 else CHUNK)
        return src.take(src.held if size < 0 else size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        return self._src.line(-1 if size is None else size)

    def peek(self, size: int = 0) -> bytes:
        if not self._src.held:
            self._src.fill()
        return self._src.buf[self._src.pos:]


class TextStdin(_Stdin, io.TextIOBase):
    """``sys.stdin``: decoded as python's would be (universal newlines), counted."""

    def __init__(self, source: _Source, encoding: str, errors: str) -> None:
        super().__init__()
        self._src = source
        self._buffer = BinaryStdin(source)
        self._encoding, self._errors = encoding, errors
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self._chars = ""  # decoded, not yet taken by the program
        self._cr = False  # a "\r" held back: a "\n" may follow in the next bytes
        # A line of these encodings ends on a character boundary: it may be decoded alone.
        self._by_line = codecs.lookup(encoding).name in _LINE_SAFE
        self._clean = self._by_line  # nothing held back in the decoder: a line may be decoded alone

    @property
    def buffer(self) -> BinaryStdin:  # type: ignore[override]
        return self._buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    def _decode(self, data: bytes, final: bool) -> bool:
        """Decode more into ``_chars``, newlines translated; False when nothing came (the end)."""
        text = ("\r" if self._cr else "") + self._decoder.decode(data, final)
        self._cr = not final and text.endswith("\r")
        if self._cr:
            text = text[:-1]
        self._chars += text.replace("\r\n", "\n").replace("\r", "\n")
        self._clean = self._by_line and not self._cr and not self._decoder.getstate()[0]
        return bool(data)

    def _more(self, line: bool) -> bool:
        data = self._src.line(-1) if line else self._buffer.read1(CHUNK)
        return self._decode(data, final=not data)

    def read(self, size: int | None = -1) -> str:
        if size is None or size < 0:
            self._decode(self._buffer.read(), final=True)
            text, self._chars = self._chars, ""
            return text
        while len(self._chars) < size and self._more(line=False):
            pass
        text, self._chars = self._chars[:size], self._chars[size:]
        return text

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        limit = -1 if size is None else size
        if limit < 0 and self._clean and not self._chars:
            # The common case, fast: one whole line of bytes, decoded alone.
            src = self._src
            end = src.buf.find(b"\n", src.pos)
            raw = src.buf[src.pos:end + 1] if end >= 0 else src.line(-1)
            if end >= 0:
                src.pos = end + 1
            if raw[-1:] == b"\n" and b"\r" not in raw:
                return raw.decode(self._encoding, self._errors)
            self._decode(raw, final=not raw)
        while "\n" not in self._chars and (limit < 0 or len(self._chars) < limit) and self._more(line=True):
            pass
        end = self._chars.find("\n") + 1 or len(self._chars)
        if limit >= 0:
            end = min(end, limit)
        text, self._chars = self._chars[:end], self._chars[end:]
        return text

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return self._lines()

    def _lines(self) -> Iterator[str]:
        """``for line in sys.stdin``: readline's fast case inlined, as this is the hot loop."""
        src, encoding, errors = self._src, self._encoding, self._errors
        while True:
            if self._clean and not self._chars:
                # Fastest: a block of plain ASCII lines, split at once; each line taken only
                # as it is handed out (the program may stop, or read otherwise, in between).
                last = src.buf.rfind(b"\n", src.pos)
                block = src.buf[src.pos:last + 1] if last >= 0 else b""
                if len(block) > 256 and block.isascii() and b"\r" not in block:
                    buf, at = src.buf, src.pos
                    for piece in block.decode("ascii").split("\n")[:-1]:
                        if src.buf is not buf or src.pos != at:
                            break  # read otherwise meanwhile: look again
                        at = src.pos = at + len(piece) + 1
                        yield piece + "\n"
                    continue
                end = src.buf.find(b"\n", src.pos)
                if end >= 0:
                    raw = src.buf[src.pos:end + 1]
                    if b"\r" not in raw:
                        src.pos = end + 1
                        yield raw.decode(encoding, errors)
                        continue
            line = self.readline()
            if not line:
                return
            yield line

    def pending_bytes(self) -> int:
        """Bytes read from the pipe that the program has not taken through this object."""
        undecoded = len(self._decoder.getstate()[0])
        return len(self._chars.encode(self._encoding, "surrogateescape")) + undecoded + self._cr


_LINE_SAFE = frozenset(("utf-8", "ascii", "latin-1", "iso8859-1", "cp1252"))

_source: _Source | None = None
_text: TextStdin | None = None


def install(fd: int = 0) -> None:
    """Make ``sys.stdin`` ours, with the encoding and errors python chose for it."""
    global _source, _text
    old = sys.stdin
    encoding = getattr(old, "encoding", None) or "utf-8"
    errors = getattr(old, "errors", None) or "strict"
    _source = _Source(fd)
    _text = TextStdin(_source, encoding, errors)
    sys.stdin = sys.__stdin__ = _text


def taken() -> int:
    """The stream offset of the next byte the program will take from stdin."""
    if _source is None or _text is None:
        return 0
    return _source.start + _source.read_total - _source.held - _text.pending_bytes()


def resume_at(offset: int) -> None:
    """This copy's pipe starts at ``offset`` of the stream (a restored task; nothing read yet)."""
    if _source is not None:
        _source.start += offset - taken()
