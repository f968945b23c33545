"""``open()`` for a task: a home path is opened on the home node, anything else as usual.

What ``io.open`` does, with the same checks and messages, over a
:class:`~mosrun.runtime.homefile.HomeFileIO`: the buffered and text layers, where the buffered
writers' ``flush()`` also waits until home has written the data. Standard library only, and
cheap to import.
"""

from __future__ import annotations

import io
import os

from mosrun.runtime import proxy
from mosrun.runtime.homefile import HomeFileIO

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

BUFFER_SIZE = 1 << 20      # buffer of a home file: big, so throughput is not round-trip bound

_real_open, _real_open_code = io.open, io.open_code


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
    if file.__class__ is int and file in proxy.fds:
        raw_mode, text = _check_mode(mode, encoding, errors, newline)
        handle, seekable, ident, append = proxy.fds[file]
        raw = HomeFileIO(handle, file, raw_mode, {"seekable": seekable, "file": ident,
                                                  "append": append}, None, file, closefd)
        return _layers(raw, mode, text, buffering, encoding, errors, newline)
    home = None if opener is not None else proxy.home_path(file)
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
    reply, _ = proxy.call("open", {"path": home, "flags": flags, "perm": 0o666, "nodir": True}, file)
    raw = HomeFileIO(reply["h"], os.fspath(file), raw_mode, reply, home)
    return _layers(raw, mode, text, buffering, encoding, errors, newline)


def open_code(path: str) -> Any:
    """``io.open_code()``: home paths (runpy.run_path, importers) are read from home."""
    home = proxy.home_path(path) if isinstance(path, str) else None
    return _real_open_code(path) if home is None else open(path, "rb")


def reopen(path: str, name: Any, mode: str, pos: int | None, buffered: bool, encoding: str | None,
           errors: str | None, line_buffering: bool) -> Any:
    """A home file of a moved task, open again as it was: same path, mode and position (a
    file opened "w" or "x" is not truncated or created again). What the checkpoint's pickler
    gives for a file object open on the home node (``checkpoint.pickling``)."""
    kind = mode.replace("t", "").replace("b", "").replace("+", "")
    # "w" and "x" must not truncate or create again; an appended file is written at our
    # position, so that what a copy restarted from an older checkpoint appends again is
    # checked against the file, not appended twice (HomeFileIO._replayed).
    again = ("r+" + ("b" if "b" in mode else "")) if kind in ("w", "x", "a") else mode
    text = "b" not in mode
    f = open(path, again, -1 if buffered or text else 0, encoding if text else None, errors if text else None)
    if text and line_buffering:
        f.reconfigure(line_buffering=True)
    raw = f.buffer.raw if text else (f.raw if buffered else f)
    if kind == "a":
        end = f.seek(0, 2)
        if pos is not None and pos < end:
            raw._replay_until = end
            f.seek(pos)
    elif pos is not None:
        f.seek(pos)
    raw.name = name
    if text:
        f.mode = mode
    raw.mode = {"r": "rb", "w": "wb", "x": "xb", "a": "ab"}[kind] + ("+" if "+" in mode else "")
    return f
