"""The home half of a task's file and import proxy: mosrun performs the task's file operations.

A Python task runs on another node under ``mosrun/runtime/launch.py``, which sends the operations on
home paths (relative paths, and absolute paths under the user's working directory) back to the
``mosrun`` process on the home node. That process runs as the user, so the operating system
enforces the user's permissions; :class:`HomeFiles` refuses nothing beyond malformed requests.

The runtime resolves every path to an absolute home path before sending it, so this side is
stateless apart from the table of open files. It never changes the working directory of mosrun.

Protocol (frames of :mod:`mosrun.runtime.frames`)
----------------------------------------
Request header ``{"t": "fs", "op": OP, "id": N, ...arguments}``; payload only for ``write``.
The runtime may send requests without waiting for the replies to earlier ones (writes it does
not wait for, reads ahead, seeks), up to a bounded window. They are performed one after the
other in the order they came, and each gets exactly one reply, in that same order, carrying the
request's id; so a reply is never taken for another request's, and every request sees the
effect of all those before it.
Reply header ``{"t": "fs_reply", "id": N, "ok": true, ...results}`` (+ payload), or on failure
``{"t": "fs_reply", "id": N, "ok": false, "errno": E, "strerror": S, "filename": F|null,
"filename2": F2|null}``, which the runtime raises as the matching ``OSError`` subclass.
A malformed request (unknown op, missing or mistyped argument) fails with ``EINVAL``.

Paths are ``str`` (undecodable bytes arrive as surrogate escapes). Names travel in payloads as
raw file-system bytes, so no name is ever mangled.

=============  ===========================================  =====================================
op             arguments                                    result
=============  ===========================================  =====================================
``stat``       path, follow=true                            st (10 ints), x (named extra fields)
``access``     path, mode, follow=true                      result (bool)
``listdir``    path, start=0                                payload: names, each ending in NUL;
                                                            next (index to ask for, or null)
``scandir``    path, start=0                                payload: records ``L F inode / name
                                                            NUL`` (L: d f l o without following
                                                            links; F: d f o n following them, n
                                                            for a dangling link); next
``modules``    dir                                          big (bool), mods {name: "p" package,
                                                            "m" module, "n" namespace dir}
``find``       dir, name                                    kind ("p" "m" "n" or null)
``get``        path, offset=0, real=false                   payload: <= 4 MiB from offset; size;
                                                            real (with real=true: the path with
                                                            symlinks resolved)
``open``       path, flags (names: O_RDONLY...), perm,      h (handle), pos (null if not
               nodir=false (true: a directory is EISDIR)    seekable), seekable, file ([device,
                                                            inode]: which handles share data)
``read``       h, n (<= 4 MiB)                              payload: the bytes (empty at EOF)
``write``      h; payload: the bytes (<= 4 MiB);            n (bytes written), pos; with at or
               at=N: all of them at offset N (pwrite),      all: all of them (n), or a failure
               position unchanged; all=true: all of them
``seek``       h, pos, whence                               pos
``fstat``      h                                            as ``stat``
``ftruncate``  h, size                                      -
``fsync``      h                                            -
``close``      h                                            -
``remove``     path                                         -
``rmdir``      path                                         -
``mkdir``      path, mode=0o777                             -
``makedirs``   path, mode=0o777, exist_ok=false             -
``rename``     src, dst                                     -
``replace``    src, dst                                     -
``chdir``      path                                         path (the directory, symlinks
                                                            resolved, as ``os.getcwd`` shows it)
``realpath``   path, strict=false                           path
``readlink``   path                                         path
``chmod``      path, mode                                   -
``utime``      path, times=[a, m]|null, ns=[a, m]|null,     -
               follow=true
``truncate``   path, length                                 -
``symlink``    src (the link's text), dst                   -
``link``       src, dst                                     -
=============  ===========================================  =====================================
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable
from typing import Any

CHUNK = 4 << 20
"""Largest read or write payload, well under the frame limit."""

LIST_PAGE = 1 << 20
"""Bytes of names per listdir/scandir reply; bigger directories are listed in pages."""

MODULE_INDEX_LIMIT = 2000
"""Directories with more entries are not indexed for imports; the task asks name by name."""

_STAT_EXTRA = (
    "st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
    "st_blksize", "st_blocks", "st_rdev", "st_flags", "st_gen", "st_birthtime",
    "st_birthtime_ns",
)

_OPEN_FLAGS = (
    "O_RDONLY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND",
    "O_NONBLOCK", "O_SYNC", "O_DSYNC", "O_NOFOLLOW", "O_DIRECTORY", "O_NOCTTY", "O_NOATIME",
)

Reply = tuple[dict[str, Any], bytes]


class BadRequest(Exception):
    """A request that does not follow the protocol; answered with EINVAL."""


def _name(value: Any) -> str | None:
    if value is None:
        return None
    return os.fsdecode(value) if isinstance(value, (str, bytes)) else str(value)


def _stat_fields(result: os.stat_result) -> dict[str, Any]:
    extra = {key: getattr(result, key) for key in _STAT_EXTRA if hasattr(result, key)}
    return {"st": list(result[:10]), "x": extra}


def _kind(entry: os.DirEntry, follow: bool) -> str:
    try:
        if entry.is_dir(follow_symlinks=follow):
            return "d"
        if entry.is_file(follow_symlinks=follow):
            return "f"
        if not follow and entry.is_symlink():
            return "l"
        if follow:
            entry.stat()  # raises for a dangling link
        return "o"
    except OSError:
        return "n"


def _progress(n: int) -> int:
    if not n:  # a device that takes nothing would make "all of it" loop for ever
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    return n


class HomeFiles:
    """Performs one task's file operations on the home node, on behalf of its runtime."""

    def __init__(self, cwd: str) -> None:
        """``cwd`` is the user's working directory; relative paths (never sent by the runtime,
        which resolves them itself) are taken against it."""
        self.cwd = cwd
        self._files: dict[int, int] = {}
        self._next_handle = 1

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, header: dict[str, Any], payload: bytes | memoryview) -> Reply:
        """Perform the request ``header`` (+ ``payload``); always returns a reply, never raises
        for anything the task sends."""
        base: dict[str, Any] = {"t": "fs_reply"}
        if isinstance(header, dict) and isinstance(header.get("id"), int):
            base["id"] = header["id"]
        try:
            if not isinstance(header, dict):
                raise BadRequest("the header is not an object")
            op = header.get("op")
            method = _OPS.get(op) if isinstance(op, str) else None
            if method is None:
                raise BadRequest(f"unknown file operation {op!r}")
            result, out = method(self, header, payload)
        except BadRequest as exc:
            return self._error(base, errno.EINVAL, f"bad file proxy request: {exc}"), b""
        except OSError as exc:
            code = exc.errno if isinstance(exc.errno, int) else errno.EIO
            text = exc.strerror or str(exc) or os.strerror(code)
            return self._error(base, code, text, exc.filename, exc.filename2), b""
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. an embedded NUL byte or an out-of-range number: what the OS would call EINVAL
            return self._error(base, errno.EINVAL, str(exc)), b""
        base["ok"] = True
        base.update(result)
        return base, out

    @staticmethod
    def _error(base: dict[str, Any], code: int, text: str, filename: Any = None,
               filename2: Any = None) -> dict[str, Any]:
        return {**base, "ok": False, "errno": code, "strerror": text,
                "filename": _name(filename), "filename2": _name(filename2)}

    def close_all(self) -> None:
        """Close every file the task left open (it ended, or moved without them)."""
        files, self._files = self._files, {}
        for fd in files.values():
            try:
                os.close(fd)
            except OSError:
                pass

    # -- argument checking -----------------------------------------------------------------------

    def _path(self, header: dict[str, Any], key: str = "path") -> str:
        value = header.get(key)
        if not isinstance(value, str):
            raise BadRequest(f"{key!r} must be a string")
        return value if not value or value.startswith("/") else os.path.join(self.cwd, value)

    @staticmethod
    def _int(header: dict[str, Any], key: str, default: int | None = None) -> int:
        value = header.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"{key!r} must be an integer")
        return value

    @staticmethod
    def _bool(header: dict[str, Any], key: str, default: bool) -> bool:
        value = header.get(key, default)
        if not isinstance(value, bool):
            raise BadRequest(f"{key!r} must be true or false")
        return value

    def _fd(self, header: dict[str, Any]) -> int:
        handle = self._int(header, "h")
        try:
            return self._files[handle]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None

    def _pair(self, header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
        value = header.get(key)
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
            raise BadRequest(f"{key!r} must be a pair of numbers or null")
        return tuple(value)

    # -- metadata ------------------------------------------------------------------------------

    def _stat(self, h: dict[str, Any], _: bytes) -> Reply:
        follow = self._bool(h, "follow", True)
        return _stat_fields(os.stat(self._path(h), follow_symlinks=follow)), b""

    def _fstat(self, h: dict[str, Any], _: bytes) -> Reply:
        return _stat_fields(os.fstat(self._fd(h))), b""

    def _access(self, h: dict[str, Any], _: bytes) -> Reply:
        path, mode = self._path(h), self._int(h, "mode")
        follow = self._bool(h, "follow", True)
        return {"result": os.access(path, mode, follow_symlinks=follow)}, b""

    def _listdir(self, h: dict[str, Any], _: bytes) -> Reply:
        names = [os.fsencode(n) + b"\0" for n in os.listdir(self._path(h))]
        return self._page(h, names)

    def _scandir(self, h: dict[str, Any], _: bytes) -> Reply:
        records = []
        with os.scandir(self._path(h)) as entries:
            for e in entries:
                plain, followed = _kind(e, False), _kind(e, True)
                records.append(f"{plain}{followed}{e.inode()}/".encode()
                               + os.fsencode(e.name) + b"\0")
        return self._page(h, records)

    def _page(self, h: dict[str, Any], items: list[bytes]) -> Reply:
        start = self._int(h, "start", 0)
        if start < 0:
            raise BadRequest("'start' must not be negative")
        out, size, i = [], 0, start
        while i < len(items) and (not out or size + len(items[i]) <= LIST_PAGE):
            out.append(items[i])
            size += len(items[i])
            i += 1
        return {"next": i if i < len(items) else None}, b"".join(out)

    def _readlink(self, h: dict[str, Any], _: bytes) -> Reply:
        return {"path": os.readlink(self._path(h))}, b""

    def _realpath(self, h: dict[str, Any], _: bytes) -> Reply:
        strict = self._bool(h, "strict", False)
        return {"path": os.path.realpath(self._path(h), strict=strict)}, b""

    def _chdir(self, h: dict[str, Any], _: bytes) -> Reply:
        # The task's working directory is virtual; check what chdir(2) would refuse.
        path = self._path(h)
        if not st.S_ISDIR(os.stat(path).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if not os.access(path, os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return {"path": os.path.realpath(path)}, b""

    # -- imports -------------------------------------------------------------------------------

    def _modules(self, h: dict[str, Any], _: bytes) -> Reply:
        directory = self._path(h, "dir")
        names = os.listdir(directory)
        if len(names) > MODULE_INDEX_LIMIT:
            return {"big": True, "mods": {}}, b""
        mods: dict[str, str] = {}
        rank = {"p": 3, "m": 2, "n": 1}
        for name in names:
            kind = None
            if name.endswith(".py"):
                if os.path.isfile(os.path.join(directory, name)):
                    name, kind = name[:-3], "m"
            elif "." not in name:
                kind = self._dir_kind(os.path.join(directory, name))
            if kind and rank[kind] > rank.get(mods.get(name, ""), 0):
                mods[name] = kind
        return {"big": False, "mods": mods}, b""

    @staticmethod
    def _dir_kind(path: str) -> str | None:
        if not os.path.isdir(path):
            return None
        return "p" if os.path.isfile(os.path.join(path, "__init__.py")) else "n"

    def _find(self, h: dict[str, Any], _: bytes) -> Reply:
        directory, name = self._path(h, "dir"), h.get("name")
        if not isinstance(name, str) or not name or "/" in name or "\0" in name:
            raise BadRequest("'name' must be a module name")
        base = os.path.join(directory, name)
        kind = self._dir_kind(base)
        if kind != "p" and os.path.isfile(base + ".py"):
            kind = "m"
        return {"kind": kind}, b""

    def _get(self, h: dict[str, Any], _: bytes) -> Reply:
        path, offset = self._path(h), self._int(h, "offset", 0)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, CHUNK)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = path  # a directory fails at read(2), which names no file
            raise
        finally:
            os.close(fd)
        result: dict[str, Any] = {"size": size}
        if self._bool(h, "real", False):
            result["real"] = os.path.realpath(path)
        return result, data

    # -- open files ----------------------------------------------------------------------------

    def _open(self, h: dict[str, Any], _: bytes) -> Reply:
        path, perm = self._path(h), self._int(h, "perm", 0o666)
        names = h.get("flags")
        if not isinstance(names, list) or not all(n in _OPEN_FLAGS for n in names):
            raise BadRequest("'flags' must be a list of open(2) flag names")
        flags = os.O_CLOEXEC
        for n in names:
            flags |= getattr(os, n, 0)
        fd = os.open(path, flags, perm)
        try:
            info = os.fstat(fd)
            if self._bool(h, "nodir", False) and st.S_ISDIR(info.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            try:
                pos: int | None = os.lseek(fd, 0, os.SEEK_END if "O_APPEND" in names
                                            else os.SEEK_CUR)
            except OSError:
                pos = None  # a pipe or a device
        except BaseException:
            os.close(fd)
            raise
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        self._files[handle] = fd
        return {"h": handle, "pos": pos, "seekable": pos is not None,
                "file": [info.st_dev, info.st_ino]}, b""

    def _read(self, h: dict[str, Any], _: bytes) -> Reply:
        n, fd = self._int(h, "n"), self._fd(h)
        if n < 0:
            raise BadRequest("'n' must not be negative")
        return {}, os.read(fd, min(n, CHUNK))

    def _write(self, h: dict[str, Any], payload: bytes | memoryview) -> Reply:
        fd = self._fd(h)
        at = h.get("at")
        if at is not None:
            # A write the task did not wait for: all of it at its offset, or a failure.
            at = self._int(h, "at")
            view, done = memoryview(payload), 0
            while done < len(view):
                done += _progress(os.pwrite(fd, view[done:], at + done))
            return {"n": done}, b""
        if self._bool(h, "all", False):
            # Likewise, at the file's position (appending, or a pipe): all or a failure.
            view, done = memoryview(payload), 0
            while done < len(view):
                done += _progress(os.write(fd, view[done:]))
            return {"n": done}, b""
        n = os.write(fd, payload)
        try:
            pos: int | None = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pos = None
        return {"n": n, "pos": pos}, b""

    def _seek(self, h: dict[str, Any], _: bytes) -> Reply:
        fd = self._fd(h)
        return {"pos": os.lseek(fd, self._int(h, "pos"), self._int(h, "whence", 0))}, b""

    def _ftruncate(self, h: dict[str, Any], _: bytes) -> Reply:
        os.ftruncate(self._fd(h), self._int(h, "size"))
        return {}, b""

    def _fsync(self, h: dict[str, Any], _: bytes) -> Reply:
        os.fsync(self._fd(h))
        return {}, b""

    def _close(self, h: dict[str, Any], _: bytes) -> Reply:
        fd = self._fd(h)
        del self._files[h["h"]]
        os.close(fd)
        return {}, b""

    # -- changes to the tree -------------------------------------------------------------------

    def _remove(self, h: dict[str, Any], _: bytes) -> Reply:
        os.remove(self._path(h))
        return {}, b""

    def _rmdir(self, h: dict[str, Any], _: bytes) -> Reply:
        os.rmdir(self._path(h))
        return {}, b""

    def _mkdir(self, h: dict[str, Any], _: bytes) -> Reply:
        os.mkdir(self._path(h), self._int(h, "mode", 0o777))
        return {}, b""

    def _makedirs(self, h: dict[str, Any], _: bytes) -> Reply:
        os.makedirs(self._path(h), self._int(h, "mode", 0o777),
                    exist_ok=self._bool(h, "exist_ok", False))
        return {}, b""

    def _rename(self, h: dict[str, Any], _: bytes) -> Reply:
        os.rename(self._path(h, "src"), self._path(h, "dst"))
        return {}, b""

    def _replace(self, h: dict[str, Any], _: bytes) -> Reply:
        os.replace(self._path(h, "src"), self._path(h, "dst"))
        return {}, b""

    def _chmod(self, h: dict[str, Any], _: bytes) -> Reply:
        os.chmod(self._path(h), self._int(h, "mode"))
        return {}, b""

    def _utime(self, h: dict[str, Any], _: bytes) -> Reply:
        path, follow = self._path(h), self._bool(h, "follow", True)
        times, ns = self._pair(h, "times", (int, float)), self._pair(h, "ns", int)
        if ns is not None:
            os.utime(path, ns=ns, follow_symlinks=follow)
        else:
            os.utime(path, times, follow_symlinks=follow)
        return {}, b""

    def _truncate(self, h: dict[str, Any], _: bytes) -> Reply:
        os.truncate(self._path(h), self._int(h, "length"))
        return {}, b""

    def _symlink(self, h: dict[str, Any], _: bytes) -> Reply:
        text = h.get("src")
        if not isinstance(text, str):
            raise BadRequest("'src' must be a string")
        os.symlink(text, self._path(h, "dst"))  # the link's text is kept as the task wrote it
        return {}, b""

    def _link(self, h: dict[str, Any], _: bytes) -> Reply:
        os.link(self._path(h, "src"), self._path(h, "dst"))
        return {}, b""


_OPS: dict[str, Callable[[HomeFiles, dict[str, Any], bytes], Reply]] = {
    "stat": HomeFiles._stat, "fstat": HomeFiles._fstat, "access": HomeFiles._access,
    "listdir": HomeFiles._listdir, "scandir": HomeFiles._scandir,
    "readlink": HomeFiles._readlink, "realpath": HomeFiles._realpath,
    "chdir": HomeFiles._chdir, "modules": HomeFiles._modules, "find": HomeFiles._find,
    "get": HomeFiles._get, "open": HomeFiles._open, "read": HomeFiles._read,
    "write": HomeFiles._write, "seek": HomeFiles._seek, "ftruncate": HomeFiles._ftruncate,
    "fsync": HomeFiles._fsync, "close": HomeFiles._close, "remove": HomeFiles._remove,
    "rmdir": HomeFiles._rmdir, "mkdir": HomeFiles._mkdir, "makedirs": HomeFiles._makedirs,
    "rename": HomeFiles._rename, "replace": HomeFiles._replace, "chmod": HomeFiles._chmod,
    "utime": HomeFiles._utime, "truncate": HomeFiles._truncate,
    "symlink": HomeFiles._symlink, "link": HomeFiles._link,
}
