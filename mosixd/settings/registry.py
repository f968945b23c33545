"""Where this user's ``mosixd --local`` cluster is described (standard library only, so that
mosrun can find it without importing the daemon)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REGISTRY = "local.json"


def runtime_dir() -> Path:
    """Where this user's local cluster lives: $MOSIX_RUNTIME_DIR, else a per-user directory."""
    if env := os.environ.get("MOSIX_RUNTIME_DIR"):
        return Path(env)
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "mosix" if base else Path(f"/tmp/mosix-{os.getuid()}")


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
    """The running local cluster of this user, or None (stale registries are ignored)."""
    path = (directory or runtime_dir()) / REGISTRY
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
