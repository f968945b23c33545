"""Task side of the home file proxy: the patched ``os`` calls and the import hook.

:func:`install` patches ``builtins.open``, ``io.open``, ``io.open_code`` (see
:mod:`mosrun.proxyfs`), ``os.stat``, ``lstat``, ``access``, ``listdir``, ``scandir``, ``remove``,
``unlink``, ``rename``, ``replace``, ``mkdir``, ``makedirs``, ``rmdir``, ``getcwd``, ``getcwdb``,
``chdir``, ``readlink``, ``chmod``, ``utime``, ``truncate``, ``symlink``, ``link``,
``os.path.realpath`` and ``os.open``; the ``*xattr`` calls answer ENOTSUP for home paths.
``os.path``, ``pathlib``, ``shutil``, ``glob`` and ``os.walk`` are built on these and follow.
A home path given to ``os.open`` yields a placeholder descriptor (a local ``/dev/null``), and
from then on ``os.read``, ``write``, ``lseek``, ``fstat``, ``fsync``, ``ftruncate`` and
``close`` serve such descriptors from home; until then they are not touched. ``os.fsync`` also
takes a home file object (``f.flush(); os.fsync(f)``), which has no descriptor.

Each patched call decides with one check whether its path is at home; if not, or when given a
descriptor or ``dir_fd``, it is the original call. Not proxied: child processes (they run in the
task's scratch directory on this node) and forked children, where home files fail with a clear
error because they would share the parent's channel.

The import hook claims home directories on ``sys.path`` (the script's, the home working
directory for ``-m`` and ``''``) and package directories under them: it finds ``name.py``,
packages and namespace directories there through the proxy, and compiles with the home file
name, so tracebacks, ``linecache`` and ``inspect`` see home paths and sources.
"""

from __future__ import annotations

import _signal
import builtins
import errno
import io
import os
import posixpath
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

    from mosrun import proxyfs as fs
else:  # runtime.py loads proxyfs by path: the mosrun package may not be importable here
    fs = sys.modules["mosrun.proxyfs"]

_real = {name: getattr(os, name) for name in (
    "stat", "lstat", "access", "listdir", "scandir", "remove", "unlink", "rename", "replace",
    "mkdir", "makedirs", "rmdir", "getcwd", "chdir", "readlink", "chmod", "utime", "truncate",
    "open", "close", "read", "write", "lseek", "fstat", "fsync", "ftruncate")}
_real_realpath = posixpath.realpath
_scratch = ""   # the directory this process really runs in


def _stat_result(reply: dict[str, Any]) -> os.stat_result:
    return os.stat_result(reply["st"], reply.get("x") or {})


# -- metadata ----------------------------------------------------------------------------------

def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
    home = None if dir_fd is not None else fs.home_path(path)
    if home is None:
        return _real["stat"](path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    return _stat_result(fs.call("stat", {"path": home, "follow": bool(follow_symlinks)}, path)[0])


def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
    if dir_fd is not None:
        return _real["lstat"](path, dir_fd=dir_fd)
    return stat(path, follow_symlinks=False)


def access(path: Any, mode: int, *, dir_fd: int | None = None, effective_ids: bool = False,
           follow_symlinks: bool = True) -> bool:
    home = None if dir_fd is not None or effective_ids else fs.home_path(path)
    if home is None or not isinstance(mode, int):
        return _real["access"](path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                               follow_symlinks=follow_symlinks)
    args = {"path": home, "mode": mode, "follow": bool(follow_symlinks)}
    return bool(fs.call("access", args, path)[0]["result"])


def readlink(path: Any, *, dir_fd: int | None = None) -> Any:
    home = None if dir_fd is not None else fs.home_path(path)
    if home is None:
        return _real["readlink"](path, dir_fd=dir_fd)
    return _same_type(path, fs.call("readlink", {"path": home}, path)[0]["path"])


def realpath(filename: Any, *, strict: bool = False) -> Any:
    home = fs.home_path(filename)
    if home is None:
        return _real_realpath(filename, strict=strict)
    reply = fs.call("realpath", {"path": home, "strict": bool(strict)}, filename)[0]
    return _same_type(filename, reply["path"])


def _same_type(user: Any, name: str) -> Any:
    return os.fsencode(name) if isinstance(os.fspath(user), bytes) else name


# -- directories -------------------------------------------------------------------------------

def _listing(op: str, home: str, user: Any) -> list[bytes]:
    items: list[bytes] = []
    start: int | None = 0
    while start is not None:
        reply, data = fs.call(op, {"path": home, "start": start}, user)
        items += data.split(b"\0")[:-1]
        start = reply.get("next")
    return items


def listdir(path: Any = None) -> list[Any]:
    path = "." if path is None else path
    home = fs.home_path(path)
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
            reply = fs.call("stat", {"path": self._home, "follow": follow}, self.path)[0]
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
    home = fs.home_path(path)
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
    return fs.CWD


def getcwdb() -> bytes:
    return os.fsencode(fs.CWD)


def chdir(path: Any) -> None:
    home = fs.home_path(path)
    if home is None:
        _real["chdir"](path)
        fs.CWD, fs.cwd_home = _real["getcwd"](), False
        return
    fs.CWD = fs.call("chdir", {"path": home}, path)[0]["path"]
    fs.cwd_home = True
    try:
        _real["chdir"](_scratch)  # so that '' on sys.path is the home cwd again
    except OSError:
        pass


# -- changes to the tree -----------------------------------------------------------------------

def _one_path(op: str, real: str) -> Any:
    def call(path: Any, *, dir_fd: int | None = None) -> None:
        home = None if dir_fd is not None else fs.home_path(path)
        if home is None:
            return _real[real](path, dir_fd=dir_fd)
        fs.call(op, {"path": home}, path)
    call.__name__ = call.__qualname__ = real
    return call


remove = _one_path("remove", "remove")
unlink = _one_path("remove", "unlink")
rmdir = _one_path("rmdir", "rmdir")


def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
    home = None if dir_fd is not None or not isinstance(mode, int) else fs.home_path(path)
    if home is None:
        return _real["mkdir"](path, mode, dir_fd=dir_fd)
    fs.call("mkdir", {"path": home, "mode": mode}, path)


def makedirs(name: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
    home = fs.home_path(name) if isinstance(mode, int) else None
    if home is None:
        return _real["makedirs"](name, mode, exist_ok)
    fs.call("makedirs", {"path": home, "mode": mode, "exist_ok": bool(exist_ok)}, name)


def _two_paths(op: str) -> Any:
    def call(src: Any, dst: Any, *, src_dir_fd: int | None = None,
             dst_dir_fd: int | None = None) -> None:
        if src_dir_fd is None and dst_dir_fd is None:
            hsrc, hdst = fs.home_path(src), fs.home_path(dst)
            if hsrc is not None and hdst is not None:
                fs.call(op, {"src": hsrc, "dst": hdst}, src, dst)
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
    home = fs.home_path(dst) if dir_fd is None else None
    text = os.fspath(src) if isinstance(src, (str, bytes, os.PathLike)) else None
    if home is None or text is None:
        return _real["symlink"](src, dst, target_is_directory, dir_fd=dir_fd)
    fs.call("symlink", {"src": os.fsdecode(text), "dst": home}, src, dst)


def link(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None,
         follow_symlinks: bool = True) -> None:
    if src_dir_fd is None and dst_dir_fd is None and follow_symlinks:
        hsrc, hdst = fs.home_path(src), fs.home_path(dst)
        if hsrc is not None and hdst is not None:
            fs.call("link", {"src": hsrc, "dst": hdst}, src, dst)
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
        if fs.home_path(path) is None:
            return real(path, *args, **kwargs)
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), os.fspath(path))
    call.__name__ = call.__qualname__ = name
    return call


def chmod(path: Any, mode: int, *, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    home = None
    if dir_fd is None and follow_symlinks and isinstance(mode, int):
        home = fs.home_path(path)
    if home is None:
        return _real["chmod"](path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    fs.call("chmod", {"path": home, "mode": mode}, path)


def _pair(value: Any, kinds: tuple[type, ...]) -> bool:
    return value is None or (isinstance(value, tuple) and len(value) == 2 and
                             all(isinstance(v, kinds) and not isinstance(v, bool) for v in value))


def utime(path: Any, times: Any = None, *, ns: Any = None, dir_fd: int | None = None,
          follow_symlinks: bool = True) -> None:
    home = fs.home_path(path) if dir_fd is None else None
    if home is None or not (_pair(times, (int, float)) and _pair(ns, (int,))) or (
            times is not None and ns is not None):
        return _real["utime"](path, times, ns=ns, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    args = {"path": home, "times": list(times) if times else None,
            "ns": list(ns) if ns else None, "follow": bool(follow_symlinks)}
    fs.call("utime", args, path)


def truncate(path: Any, length: int) -> None:
    home = fs.home_path(path) if isinstance(length, int) else None
    if home is None:
        return _real["truncate"](path, length)
    fs.call("truncate", {"path": home, "length": length}, path)


# -- descriptors of home files -------------------------------------------------------------------

_FLAG_NAMES = ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_SYNC",
               "O_NOFOLLOW", "O_DIRECTORY", "O_NOCTTY")


def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    home = None if dir_fd is not None or not isinstance(flags, int) else fs.home_path(path)
    if home is None:
        return _real["open"](path, flags, mode, dir_fd=dir_fd)
    names = [("O_RDONLY", "O_WRONLY", "O_RDWR")[flags & os.O_ACCMODE]] if (
        flags & os.O_ACCMODE) < 3 else []
    names += [n for n in _FLAG_NAMES if hasattr(os, n) and flags & getattr(os, n)
              == getattr(os, n)]
    reply = fs.call("open", {"path": home, "flags": names, "perm": mode}, path)[0]
    fd = _real["open"]("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # reserves the number
    ident = reply.get("file")
    fs.fds[fd] = (reply["h"], bool(reply.get("seekable")),
                  tuple(ident) if isinstance(ident, list) else None, "O_APPEND" in names)
    if os.read is _real["read"]:
        for name, fn in _FD_CALLS.items():
            setattr(os, name, fn)
    return fd


def _fd_call(name: str, op: str, args: Any, result: Any) -> Any:
    real = _real[name]

    def call(fd: int, *rest: Any) -> Any:
        state = fs.fds.get(fd) if fd.__class__ is int else None
        if state is None:
            return real(fd, *rest)
        header = args(*rest)
        header["h"] = state[0]
        payload = memoryview(rest[0]).cast("B")[:fs.CHUNK] if op == "write" else b""
        if op in ("write", "ftruncate"):
            fs.chan.touch(state[2])  # what files read ahead from it may be stale now
        reply, data = fs.call(op, header, payload=payload)
        return result(reply, data)
    call.__name__ = call.__qualname__ = name
    return call


_fsync_fd = _fd_call("fsync", "fsync", lambda: {}, lambda r, d: None)


def _fsync(fd: Any) -> None:
    """``os.fsync``: also takes a home file object, which has no descriptor to give. Like the
    real call it syncs what was written to the file, not what its buffer still holds."""
    if fd.__class__ is not int:
        raw = getattr(getattr(fd, "buffer", fd), "raw", fd)
        if isinstance(raw, fs.HomeFileIO):
            return raw.fsync()
    return _fsync_fd(fd)


def _close(fd: int) -> None:
    state = fs.fds.pop(fd, None) if fd.__class__ is int else None
    if state is None:
        return _real["close"](fd)
    try:
        fs.call("close", {"h": state[0]})
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


# -- imports -----------------------------------------------------------------------------------

_bx = sys.modules["_frozen_importlib_external"]
_bootstrap = sys.modules["_frozen_importlib"]


class HomeLoader(_bx.FileLoader, _bx.SourceLoader):  # type: ignore[misc,name-defined]
    """Loads a module's source from home. Execution goes through importlib's own frames, which
    CPython removes from tracebacks, so a traceback looks as for a local module."""

    def get_data(self, path: str) -> bytes:
        return fs.fetch(path)


class HomeFinder:
    """Finds modules in one home directory (or, for ``''``, in the current one)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        directory = self.path if self.path is not None else fs.CWD if fs.cwd_home else None
        if directory is None:
            return None
        tail = fullname.rpartition(".")[2]
        kind = _module_kind(directory, tail)
        base = directory.rstrip("/") + "/" + tail
        if kind == "n":
            spec = _bootstrap.ModuleSpec(fullname, None)
            spec.submodule_search_locations = [base]
            return spec
        if kind not in ("p", "m"):
            return None
        origin = base + "/__init__.py" if kind == "p" else base + ".py"
        return _bx.spec_from_file_location(
            fullname, origin, loader=HomeLoader(fullname, origin),
            submodule_search_locations=[base] if kind == "p" else None)

    def invalidate_caches(self) -> None:
        fs.index.clear()

    def __repr__(self) -> str:
        return f"HomeFinder({self.path!r})"


_BIG = object()  # the index of a directory too big to list: ask name by name


def _index(directory: str) -> Any:
    """The modules of a home directory: one listing, kept until invalidate_caches() or a
    change made through the proxy, instead of a round trip for every import that passes by.
    Raises OSError when ``directory`` is not a directory."""
    mods = fs.index.get(directory)
    if mods is None:
        reply = fs.call("modules", {"dir": directory})[0]
        mods = fs.index[directory] = _BIG if reply.get("big") else reply.get("mods") or {}
    return mods


def _module_kind(directory: str, name: str) -> str | None:
    try:
        mods = _index(directory)
    except OSError:
        return None
    if mods is _BIG:
        return fs.call("find", {"dir": directory, "name": name})[0].get("kind")
    return mods.get(name)


def path_hook(path: str) -> HomeFinder:
    """``sys.path_hooks`` entry: claims home directories (like FileFinder, only directories)."""
    if path == _scratch:
        return HomeFinder(None)  # PathFinder turned '' into the real cwd
    home = fs.home_path(path) if isinstance(path, str) else None
    if home is None:
        raise ImportError("not a home directory", path=path)
    try:
        _index(home)
    except OSError:
        raise ImportError("only directories are supported", path=path) from None
    return HomeFinder(home)


# -- signal handlers -------------------------------------------------------------------------------

_real_signal, _real_getsignal = _signal.signal, _signal.getsignal


def _shown(handler: Any) -> Any:
    return getattr(handler, "mosrun_handler", handler)


def signal(signalnum: int, handler: Any) -> Any:
    """``_signal.signal`` (what ``signal.signal`` calls): Python handlers are wrapped by
    ``proxyfs.deferring`` so that they never cut a request to home in the middle."""
    wrapped = fs.deferring(handler, fs.chan) if callable(handler) else handler
    return _shown(_real_signal(signalnum, wrapped))


def getsignal(signalnum: int) -> Any:
    """``_signal.getsignal``: the handler as it was given, not its wrapper."""
    return _shown(_real_getsignal(signalnum))


# -- installation ------------------------------------------------------------------------------

def _after_fork() -> None:
    fs.chan.broken = "home files are not available in a forked child of a remote task"


def install(channel: fs.Channel, home_cwd: str, roots: list[str], local: list[str]) -> None:
    """Route home paths through ``channel``: set the virtual cwd, patch, add the import hook."""
    global _scratch
    _scratch = _real["getcwd"]()
    fs.chan, fs.CWD, fs.cwd_home = channel, home_cwd, True
    fs.roots = tuple(dict.fromkeys(fs.prefix(r) for r in roots))
    fs.local = tuple(dict.fromkeys(fs.prefix(p) for p in local if p))
    patches = {"stat": stat, "lstat": lstat, "access": access, "listdir": listdir,
               "scandir": scandir, "remove": remove, "unlink": unlink, "rename": rename,
               "replace": replace, "mkdir": mkdir, "makedirs": makedirs, "rmdir": rmdir,
               "getcwd": getcwd, "getcwdb": getcwdb, "chdir": chdir, "readlink": readlink,
               "chmod": chmod, "utime": utime, "truncate": truncate, "symlink": symlink,
               "link": link, "open": os_open, "fsync": _fsync}
    for name in ("listxattr", "getxattr", "setxattr", "removexattr"):
        if hasattr(os, name):
            patches[name] = _no_xattr(name)
    for name, fn in patches.items():
        setattr(os, name, fn)
    posixpath.realpath = realpath
    builtins.open = io.open = fs.open
    io.open_code = fs.open_code
    shutil = sys.modules.get("shutil")
    if shutil is not None:  # its rmtree would walk home directories by descriptor: by path
        shutil._use_fd_functions = False  # type: ignore[attr-defined]
    tokenize = sys.modules.get("tokenize")
    if tokenize is not None:  # linecache reads sources with tokenize's saved open()
        tokenize._builtin_open = fs.open  # type: ignore[attr-defined]
    for signum in _signal.valid_signals():  # SIGINT's default_int_handler, usually alone
        handler = _real_getsignal(signum)
        if callable(handler):
            _real_signal(signum, fs.deferring(handler, channel))
    _signal.signal, _signal.getsignal = signal, getsignal
    sys.path_hooks.insert(0, path_hook)
    os.register_at_fork(after_in_child=_after_fork)
