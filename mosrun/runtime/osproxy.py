"""The ``os`` calls of a task, for home paths and home descriptors.

``stat``, ``lstat``, ``access``, ``listdir``, ``scandir``, ``remove``, ``unlink``, ``rename``,
``replace``, ``mkdir``, ``makedirs``, ``rmdir``, ``getcwd``, ``getcwdb``, ``chdir``,
``readlink``, ``chmod``, ``utime``, ``truncate``, ``symlink``, ``link``, ``os.path.realpath``
and ``os.open`` act on home for home paths; the ``*xattr`` calls answer ENOTSUP there.
``os.path``, ``pathlib``, ``shutil``, ``glob`` and ``os.walk`` are built on these and follow.
A home path given to ``os.open`` yields a placeholder descriptor (a local ``/dev/null``), and
from then on ``os.read``, ``write``, ``lseek``, ``fstat``, ``fsync``, ``ftruncate`` and
``close`` serve such descriptors from home; until then they are not touched. ``os.fsync`` also
takes a home file object (``f.flush(); os.fsync(f)``), which has no descriptor.

Each call decides with one check whether its path is at home; if not, or when given a
descriptor or ``dir_fd``, it is the original call. :func:`mosrun.runtime.install.install` puts
:func:`patches` in place. Not proxied: child processes (they run in the task's scratch
directory on this node) and forked children, where home files fail with a clear error because
they would share the parent's channel. Standard library only, and cheap to import.
"""

from __future__ import annotations

import errno
import os
import posixpath

from mosrun.runtime import proxy
from mosrun.runtime.channel import CHUNK
from mosrun.runtime.homefile import HomeFileIO

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

_real = {name: getattr(os, name) for name in (
    "stat", "lstat", "access", "listdir", "scandir", "remove", "unlink", "rename", "replace",
    "mkdir", "makedirs", "rmdir", "getcwd", "chdir", "readlink", "chmod", "utime", "truncate",
    "open", "close", "read", "write", "lseek", "fstat", "fsync", "ftruncate")}
_real_realpath = posixpath.realpath


def _stat_result(reply: dict[str, Any]) -> os.stat_result:
    return os.stat_result(reply["st"], reply.get("x") or {})


# -- metadata ----------------------------------------------------------------------------------

def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
    home = None if dir_fd is not None else proxy.home_path(path)
    if home is None:
        return _real["stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    return _stat_result(proxy.call("stat", {"path": home, "follow": bool(follow_symlinks)}, path)[0])


def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
    if dir_fd is not None:
        return _real["lstat"](path, dir_fd=dir_fd)
    return stat(path, follow_symlinks=False)


def access(path: Any, mode: int, *, dir_fd: int | None = None, effective_ids: bool = False,
           follow_symlinks: bool = True) -> bool:
    home = None if dir_fd is not None or effective_ids else proxy.home_path(path)
    if home is None or not isinstance(mode, int):
        return _real["access"](path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                               follow_symlinks=follow_symlinks)
    args = {"path": home, "mode": mode, "follow": bool(follow_symlinks)}
    return bool(proxy.call("access", args, path)[0]["result"])


def readlink(path: Any, *, dir_fd: int | None = None) -> Any:
    home = None if dir_fd is not None else proxy.home_path(path)
    if home is None:
        return _real["readlink"](path, dir_fd=dir_fd)
    return _same_type(path, proxy.call("readlink", {"path": home}, path)[0]["path"])


def realpath(filename: Any, *, strict: bool = False) -> Any:
    home = proxy.home_path(filename)
    if home is None:
        return _real_realpath(filename, strict=strict)
    reply = proxy.call("realpath", {"path": home, "strict": bool(strict)}, filename)[0]
    return _same_type(filename, reply["path"])


def _same_type(user: Any, name: str) -> Any:
    return os.fsencode(name) if isinstance(os.fspath(user), bytes) else name


# -- directories -------------------------------------------------------------------------------

def _listing(op: str, home: str, user: Any) -> list[bytes]:
    items: list[bytes] = []
    start: int | None = 0
    while start is not None:
        reply, data = proxy.call(op, {"path": home, "start": start}, user)
        items += data.split(b"\0")[:-1]
        start = reply.get("next")
    return items


def listdir(path: Any = None) -> list[Any]:
    path = "." if path is None else path
    home = proxy.home_path(path)
    if home is None:
        return _real["listdir"](path)
    names = _listing("listdir", home, path)
    return names if isinstance(os.fspath(path), bytes) else [os.fsdecode(n) for n in names]


class HomeDirEntry:
    """An entry of a home directory, as ``os.scandir`` yields (``os.DirEntry`` cannot be made)."""

    __slots__ = ("name", "path", "_home", "_kinds", "_ino", "_stat")

    def __init__(self, name: Any, path: Any, home: str, kinds: str, ino: int) -> None:
        self.name, self.path, self._home, self._kinds, self._ino = name, path, home, kinds, ino
        self._stat: dict[bool, os.stat_result] = {}

    def inode(self) -> int:
        return self._ino

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._kinds[bool(follow_symlinks)] == "d"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._kinds[bool(follow_symlinks)] == "f"

    def is_symlink(self) -> bool:
        return self._kinds[0] == "l"

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        follow = bool(follow_symlinks) and self._kinds[0] == "l"  # else lstat says it all
        if follow not in self._stat:
            reply = proxy.call("stat", {"path": self._home, "follow": follow}, self.path)[0]
            self._stat[follow] = _stat_result(reply)
        return self._stat[follow]

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _ScandirIterator:
    """What ``os.scandir`` returns: an iterator that is also a context manager."""

    def __init__(self, entries: list[HomeDirEntry]) -> None:
        self._it = iter(entries)

    def __iter__(self) -> _ScandirIterator:
        return self

    def __next__(self) -> HomeDirEntry:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self) -> _ScandirIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scandir(path: Any = None) -> Any:
    path = "." if path is None else path
    home = proxy.home_path(path)
    if home is None:
        return _real["scandir"](path)
    user = os.fspath(path)
    entries = []
    for record in _listing("scandir", home, path):
        slash = record.index(b"/", 2)
        raw = record[slash + 1:]
        name = raw if isinstance(user, bytes) else os.fsdecode(raw)
        kinds = record[:2].decode()
        entries.append(HomeDirEntry(name, posixpath.join(user, name),
                                    home.rstrip("/") + "/" + os.fsdecode(raw), kinds,
                                    int(record[2:slash])))
    return _ScandirIterator(entries)


def getcwd() -> str:
    return proxy.CWD


def getcwdb() -> bytes:
    return os.fsencode(proxy.CWD)


def chdir(path: Any) -> None:
    home = proxy.home_path(path)
    if home is None:
        _real["chdir"](path)
        proxy.CWD, proxy.cwd_home = _real["getcwd"](), False
        return
    proxy.CWD = proxy.call("chdir", {"path": home}, path)[0]["path"]
    proxy.cwd_home = True
    try:
        _real["chdir"](proxy.scratch)  # so that '' on sys.path is the home cwd again
    except OSError:
        pass


# -- changes to the tree -----------------------------------------------------------------------

def _one_path(op: str, real: str) -> Any:
    def call(path: Any, *, dir_fd: int | None = None) -> None:
        home = None if dir_fd is not None else proxy.home_path(path)
        if home is None:
            return _real[real](path, dir_fd=dir_fd)
        proxy.call(op, {"path": home}, path)
    call.__name__ = call.__qualname__ = real
    return call


remove = _one_path("remove", "remove")
unlink = _one_path("remove", "unlink")
rmdir = _one_path("rmdir", "rmdir")


def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    home = None if dir_fd is not None or not isinstance(mode, int) else proxy.home_path(path)
    if home is None:
        return _real["mkdir"](path, mode, dir_fd=dir_fd)
    proxy.call("mkdir", {"path": home, "mode": mode}, path)


def makedirs(name: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
    home = proxy.home_path(name) if isinstance(mode, int) else None
    if home is None:
        return _real["makedirs"](name, mode, exist_ok)
    proxy.call("makedirs", {"path": home, "mode": mode, "exist_ok": bool(exist_ok)}, name)


def _two_paths(op: str) -> Any:
    def call(src: Any, dst: Any, *, src_dir_fd: int | None = None,
             dst_dir_fd: int | None = None) -> None:
        if src_dir_fd is None and dst_dir_fd is None:
            hsrc, hdst = proxy.home_path(src), proxy.home_path(dst)
            if hsrc is not None and hdst is not None:
                proxy.call(op, {"src": hsrc, "dst": hdst}, src, dst)
                return
            if hsrc is not None or hdst is not None:  # as between two local file systems
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None,
                              os.fspath(dst))
        return _real[op](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    call.__name__ = call.__qualname__ = op
    return call


rename, replace = _two_paths("rename"), _two_paths("replace")


def symlink(src: Any, dst: Any, target_is_directory: bool = False, *,
            dir_fd: int | None = None) -> None:
    home = proxy.home_path(dst) if dir_fd is None else None
    text = os.fspath(src) if isinstance(src, (str, bytes, os.PathLike)) else None
    if home is None or text is None:
        return _real["symlink"](src, dst, target_is_directory, dir_fd=dir_fd)
    proxy.call("symlink", {"src": os.fsdecode(text), "dst": home}, src, dst)


def link(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None,
         follow_symlinks: bool = True) -> None:
    if src_dir_fd is None and dst_dir_fd is None and follow_symlinks:
        hsrc, hdst = proxy.home_path(src), proxy.home_path(dst)
        if hsrc is not None and hdst is not None:
            proxy.call("link", {"src": hsrc, "dst": hdst}, src, dst)
            return None
        if hsrc is not None or hdst is not None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None,
                          os.fspath(dst))
    return _real["link"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd,
                         follow_symlinks=follow_symlinks)


def _no_xattr(name: str) -> Any:
    # Extended attributes are not proxied: home files look like a file system without them,
    # which is what shutil.copy2 and copystat expect to meet sometimes.
    real = getattr(os, name)

    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        if proxy.home_path(path) is None:
            return real(path, *args, **kwargs)
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), os.fspath(path))
    call.__name__ = call.__qualname__ = name
    return call


def chmod(path: Any, mode: int, *, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    home = None
    if dir_fd is None and follow_symlinks and isinstance(mode, int):
        home = proxy.home_path(path)
    if home is None:
        return _real["chmod"](path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    proxy.call("chmod", {"path": home, "mode": mode}, path)


def _pair(value: Any, kinds: tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, tuple) and len(value) == 2 and
                             all(isinstance(v, kinds) and not isinstance(v, bool) for v in value))


def utime(path: Any, times: Any = None, *, ns: Any = None, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    home = proxy.home_path(path) if dir_fd is None else None
    if home is None or not (_pair(times, (int, float)) and _pair(ns, (int,))) or (
            times is not None and ns is not None):
        return _real["utime"](path, times, ns=ns, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    args = {"path": home, "times": list(times) if times else None,
            "ns": list(ns) if ns else None, "follow": bool(follow_symlinks)}
    proxy.call("utime", args, path)


def truncate(path: Any, length: int) -> None:
    home = proxy.home_path(path) if isinstance(length, int) else None
    if home is None:
        return _real["truncate"](path, length)
    proxy.call("truncate", {"path": home, "length": length}, path)


# -- descriptors of home files -------------------------------------------------------------------

_FLAG_NAMES = ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_SYNC",
               "O_NOFOLLOW", "O_DIRECTORY", "O_NOCTTY")


def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    home = None if dir_fd is not None or not isinstance(flags, int) else proxy.home_path(path)
    if home is None:
        return _real["open"](path, flags, mode, dir_fd=dir_fd)
    names = [("O_RDONLY", "O_WRONLY", "O_RDWR")[flags & os.O_ACCMODE]] if (
        flags & os.O_ACCMODE) < 3 else []
    names += [n for n in _FLAG_NAMES if hasattr(os, n) and flags & getattr(os, n)
              == getattr(os, n)]
    reply = proxy.call("open", {"path": home, "flags": names, "perm": mode}, path)[0]
    fd = _real["open"]("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # reserves the number
    ident = reply.get("file")
    proxy.fds[fd] = (reply["h"], bool(reply.get("seekable")),
                  tuple(ident) if isinstance(ident, list) else None, "O_APPEND" in names)
    if os.read is _real["read"]:
        for name, fn in _FD_CALLS.items():
            setattr(os, name, fn)
    return fd


def _fd_call(name: str, op: str, args: Any, result: Any) -> Any:
    real = _real[name]

    def call(fd: int, *rest: Any) -> Any:
        state = proxy.fds.get(fd) if fd.__class__ is int else None
        if state is None:
            return real(fd, *rest)
        header = args(*rest)
        header["h"] = state[0]
        payload = memoryview(rest[0]).cast("B")[:CHUNK] if op == "write" else b""
        if op in ("write", "ftruncate"):
            proxy.chan.touch(state[2])  # what files read ahead from it may be stale now
        reply, data = proxy.call(op, header, payload=payload)
        return result(reply, data)
    call.__name__ = call.__qualname__ = name
    return call


_fsync_fd = _fd_call("fsync", "fsync", lambda: {}, lambda r, d: None)


def _fsync(fd: Any) -> None:
    """``os.fsync``: also takes a home file object, which has no descriptor to give. Like the
    real call it syncs what was written to the file, not what its buffer still holds."""
    if fd.__class__ is not int:
        raw = getattr(getattr(fd, "buffer", fd), "raw", fd)
        if isinstance(raw, HomeFileIO):
            return raw.fsync()
    return _fsync_fd(fd)


def _close(fd: int) -> None:
    state = proxy.fds.pop(fd, None) if fd.__class__ is int else None
    if state is None:
        return _real["close"](fd)
    try:
        proxy.call("close", {"h": state[0]})
    finally:
        _real["close"](fd)


_FD_CALLS = {
    "read": _fd_call("read", "read", lambda n: {"n": n}, lambda r, d: d),
    "write": _fd_call("write", "write", lambda data: {}, lambda r, d: r["n"]),
    "lseek": _fd_call("lseek", "seek", lambda pos, how: {"pos": pos, "whence": how},
                      lambda r, d: r["pos"]),
    "fstat": _fd_call("fstat", "fstat", lambda: {}, lambda r, d: _stat_result(r)),
    "fsync": _fsync,
    "ftruncate": _fd_call("ftruncate", "ftruncate", lambda size: {"size": size},
                          lambda r, d: None),
    "close": _close,
}


def patches() -> dict[str, Any]:
    """What to set on the ``os`` module: name -> the call above that takes its place."""
    found = {"stat": stat, "lstat": lstat, "access": access, "listdir": listdir,
             "scandir": scandir, "remove": remove, "unlink": unlink, "rename": rename,
             "replace": replace, "mkdir": mkdir, "makedirs": makedirs, "rmdir": rmdir,
             "getcwd": getcwd, "getcwdb": getcwdb, "chdir": chdir, "readlink": readlink,
             "chmod": chmod, "utime": utime, "truncate": truncate, "symlink": symlink,
             "link": link, "open": os_open, "fsync": _fsync}
    for name in ("listxattr", "getxattr", "setxattr", "removexattr"):
        if hasattr(os, name):
            found[name] = _no_xattr(name)
    return found
