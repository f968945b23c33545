"""Putting the proxy in place: what the runtime changes in the task's interpreter.

:func:`install` routes home paths through the channel to home: ``builtins.open``, ``io.open``
and ``io.open_code`` (:mod:`mosrun.runtime.fileopen`), the ``os`` calls
(:mod:`mosrun.runtime.osproxy`), ``os.path.realpath``, the import hook
(:mod:`mosrun.runtime.importer`), and the signal handlers, which are wrapped so that they
never cut a request to home in the middle. Standard library only, and cheap to import.
"""

from __future__ import annotations

import _signal
import builtins
import io
import os
import posixpath
import sys

from mosrun.runtime import fileopen, osproxy, proxy
from mosrun.runtime.channel import Channel, deferring
from mosrun.runtime.importer import path_hook

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at task start
    from typing import Any

_real_signal, _real_getsignal = _signal.signal, _signal.getsignal


def _shown(handler: Any) -> Any:
    return getattr(handler, "mosrun_handler", handler)


def signal(signalnum: int, handler: Any) -> Any:
    """``_signal.signal`` (what ``signal.signal`` calls): Python handlers are wrapped by
    :func:`~mosrun.runtime.channel.deferring` so that they never cut a request to home in the middle."""
    wrapped = deferring(handler, proxy.chan) if callable(handler) else handler
    return _shown(_real_signal(signalnum, wrapped))


def getsignal(signalnum: int) -> Any:
    """``_signal.getsignal``: the handler as it was given, not its wrapper."""
    return _shown(_real_getsignal(signalnum))


# -- installation ------------------------------------------------------------------------------

def _after_fork() -> None:
    proxy.chan.broken = "home files are not available in a forked child of a remote task"


def install(channel: Channel, home_cwd: str, roots: list[str], local: list[str]) -> None:
    """Route home paths through ``channel``: set the virtual cwd, patch, add the import hook."""
    proxy.scratch = os.getcwd()
    proxy.chan, proxy.CWD, proxy.cwd_home = channel, home_cwd, True
    proxy.roots = tuple(dict.fromkeys(proxy.prefix(r) for r in roots))
    proxy.local = tuple(dict.fromkeys(proxy.prefix(p) for p in local if p))
    for name, fn in osproxy.patches().items():
        setattr(os, name, fn)
    posixpath.realpath = osproxy.realpath
    builtins.open = io.open = fileopen.open
    io.open_code = fileopen.open_code
    shutil = sys.modules.get("shutil")
    if shutil is not None:  # its rmtree would walk home directories by descriptor: by path
        shutil._use_fd_functions = False  # type: ignore[attr-defined]
    tokenize = sys.modules.get("tokenize")
    if tokenize is not None:  # linecache reads sources with tokenize's saved open()
        tokenize._builtin_open = fileopen.open  # type: ignore[attr-defined]
    for signum in _signal.valid_signals():  # SIGINT's default_int_handler, usually alone
        handler = _real_getsignal(signum)
        if callable(handler):
            _real_signal(signum, deferring(handler, channel))
    _signal.signal, _signal.getsignal = signal, getsignal
    sys.path_hooks.insert(0, path_hook)
    os.register_at_fork(after_in_child=_after_fork)
