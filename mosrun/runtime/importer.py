"""The import hook of a task: modules in home directories are imported from home.

It claims home directories on ``sys.path`` (the script's, the home working directory for
``-m`` and ``''``) and package directories under them: it finds ``name.py``, packages and
namespace directories there through the proxy, and compiles with the home file name, so
tracebacks, ``linecache`` and ``inspect`` see home paths and sources. Standard library only,
and cheap to import.
"""

from __future__ import annotations

import sys

from mosrun.runtime import proxy

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

_bx = sys.modules["_frozen_importlib_external"]
_bootstrap = sys.modules["_frozen_importlib"]


class HomeLoader(_bx.FileLoader, _bx.SourceLoader):  # type: ignore[misc,name-defined]
    """Loads a module's source from home. Execution goes through importlib's own frames, which
    CPython removes from tracebacks, so a traceback looks as for a local module."""

    def get_data(self, path: str) -> bytes:
        return proxy.fetch(path)


class HomeFinder:
    """Finds modules in one home directory (or, for ``''``, in the current one)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        directory = self.path if self.path is not None else proxy.CWD if proxy.cwd_home else None
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
        proxy.index.clear()

    def __repr__(self) -> str:
        return f"HomeFinder({self.path!r})"


_BIG = object()  # the index of a directory too big to list: ask name by name


def _index(directory: str) -> Any:
    """The modules of a home directory: one listing, kept until invalidate_caches() or a
    change made through the proxy, instead of a round trip for every import that passes by.
    Raises OSError when ``directory`` is not a directory."""
    mods = proxy.index.get(directory)
    if mods is None:
        reply = proxy.call("modules", {"dir": directory})[0]
        mods = proxy.index[directory] = _BIG if reply.get("big") else reply.get("mods") or {}
    return mods


def _module_kind(directory: str, name: str) -> str | None:
    try:
        mods = _index(directory)
    except OSError:
        return None
    if mods is _BIG:
        return proxy.call("find", {"dir": directory, "name": name})[0].get("kind")
    return mods.get(name)


def path_hook(path: str) -> HomeFinder:
    """``sys.path_hooks`` entry: claims home directories (like FileFinder, only directories)."""
    if path == proxy.scratch:
        return HomeFinder(None)  # PathFinder turned '' into the real cwd
    home = proxy.home_path(path) if isinstance(path, str) else None
    if home is None:
        raise ImportError("not a home directory", path=path)
    try:
        _index(home)
    except OSError:
        raise ImportError("only directories are supported", path=path) from None
    return HomeFinder(home)
