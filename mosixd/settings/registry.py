"""Where this user's ``mosixd --local`` cluster is described (standard library only, so that
mosrun can find it without importing the daemon)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

REGISTRY = "local.json"


def runtime_dir() -> Path:
    """Where this user's local cluster lives: $MOSIX_RUNTIME_DIR, else a per-user directory."""
    if env := os.environ.get("MOSIX_RUNTIME_DIR"):
        return Path(env)
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "mosix" if base else Path(f"/tmp/mosix-{os.getuid()}")


class UntrustedRuntimeDir(LookupError):
    """The runtime directory could have been planted by another user (one-line message)."""


def check_trusted(path: Path) -> None:
    """Raise ``UntrustedRuntimeDir`` unless ``path`` is a real directory owned by this user or
    by root and writable by its owner only. Another user who creates ``/tmp/mosix-$UID``
    first could otherwise hand this user's tools a fake daemon socket. A missing directory
    is fine: the caller creates its own."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UntrustedRuntimeDir(f"runtime directory {path}: {exc.strerror}") from None
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        why = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
    elif st.st_uid not in (uid, 0):
        why = f"owned by uid {st.st_uid}, not by you (uid {uid}) or root"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return
    raise UntrustedRuntimeDir(f"refusing runtime directory {path}: {why}; remove it, or set "
                              "MOSIX_RUNTIME_DIR to a directory of your own")


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def present(path: str | os.PathLike[str]) -> bool:
    """Whether a daemon's socket (or anything) is at ``path``. One this user may not even look
    at counts, so that the tools then say "permission denied" rather than that no daemon runs."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_registry(directory: Path | None = None) -> dict[str, Any] | None:
    """The running local cluster of this user, or None (stale registries are ignored).
    Raises ``UntrustedRuntimeDir`` when the directory is not safely this user's."""
    root = directory or runtime_dir()
    check_trusted(root)
    path = root / REGISTRY
    try:
        registry = json.loads(path.read_text())
        pid = int(registry["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return registry if alive(pid) else None


def find_local_node(node: str, registry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The registry entry of a local node named by id or address."""
    for entry in (registry or {}).get("nodes", []):
        if node in (entry["id"], entry["address"]):
            return entry
    return None
