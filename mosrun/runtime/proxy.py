"""The task's view of home: where a path lives, and one request about it.

A task runs on another node but its files are at home. Relative paths (taken against a
virtual working directory that starts as the user's home working directory) and absolute paths
under the home roots (that directory and the script's) are served by ``mosrun`` on the home
node; the protocol is described in :mod:`mosrun.commands.homefs`. Other paths, paths under this
interpreter's own prefixes, and file descriptors stay local.

This module holds the proxy's state (set by :func:`mosrun.runtime.install.install`): the
channel, the working directory, the home roots, the descriptors of home files. :func:`call`
turns a failed request into the ``OSError`` the local call would have raised. Standard library
only, and cheap to import.
"""

from __future__ import annotations

import errno
import os
import posixpath

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

    from mosrun.runtime.channel import Channel

chan: Channel = None  # type: ignore[assignment]  # set by install.install()
CWD = "/"            # the task's working directory, as os.getcwd() shows it
cwd_home = True      # whether CWD is on the home node
roots: tuple[str, ...] = ()    # home directory prefixes, each ending in "/"
local: tuple[str, ...] = ()    # prefixes that stay local even under a home root
fds: dict[int, tuple[int, bool, Any, bool]] = {}
"""placeholder descriptor -> (home handle, seekable, file identity, opened O_APPEND)"""
index: dict[str, Any] = {}     # import finder: home directory -> {module name: kind}
task_env: dict[str, str] = {}  # the MOSIX_* variables the daemon passed (plumbing removed from environ)
scratch = ""                   # the directory this process really runs in (set by install())


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
