"""Starts the user's program as python would on the home node, and ends it as python would.

``launch.py`` imports this module and calls :func:`main`.
The program sees ``sys.argv`` and ``sys.path[0]`` as python sets them, a fresh ``__main__``
named after the home file (with ``__file__``, ``__loader__`` and ``__spec__`` as python gives
them), its environment without our variables, and home files and modules through the proxy.
At the end, an uncaught exception is printed as python prints it, without our frames (through
``sys.excepthook`` if the program replaced it), and then left to python's own ending: exit
status 1, ``SystemExit`` as usual, death by SIGINT after a ``KeyboardInterrupt``, atexit
handlers and flushes in python's order.

Standard library only.
"""

from __future__ import annotations

import errno
import os
import sys

from mosrun.runtime import channel, fileopen, homefile, importer, install, osproxy, proxy, stdin, task

# The runtime's plumbing, removed from the program's environment. MOSIX_TASK_ID,
# MOSIX_HOME_NODE and MOSIX_NODE stay visible, as they do for non-Python tasks.
_PLUMBING = ("MOSIX_RUNTIME_FD", "MOSIX_HOME_CWD", "MOSIX_PROGRAM", "MOSIX_STDOUT_TTY", "MOSIX_STDERR_TTY")
_VISIBLE = ("MOSIX_TASK_ID", "MOSIX_HOME_NODE", "MOSIX_NODE")


# The modules whose frames a traceback never shows: a local run has none of them.
_PROXY_FILES = frozenset(module.__file__ for module in (
    sys.modules[__name__], channel, proxy, homefile, fileopen, osproxy, importer, install, stdin))


def _die(message: str) -> None:
    sys.stderr.write(f"mosrun runtime: {message}\n")
    raise SystemExit(2)


def _parse(args: list[str]) -> tuple[str, str, list[str]]:
    """(kind, script/code/module, sys.argv) as python reads its arguments."""
    if not args or args[0] == "-":
        return "stdin", "-", args or [""]
    first = args[0]
    if first[:2] in ("-c", "-m"):
        if first[2:]:  # -cCODE, -mMODULE
            value, rest = first[2:], args[1:]
        elif len(args) > 1:
            value, rest = args[1], args[2:]
        else:
            _die(f"Argument expected for the {first[:2]} option")
        return first[1], value, [first[:2], *rest]
    return "script", first, list(args)


def _strip(exc: BaseException | None, files: set[str], seen: set[int]) -> None:
    """Drop our frames from the tracebacks of ``exc`` and the exceptions chained to it."""
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb, head, last = exc.__traceback__, None, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename not in files:
                if last is None:
                    head = tb
                else:
                    last.tb_next = tb
                last = tb
            tb = tb.tb_next
        if last is not None:
            last.tb_next = None
        exc.__traceback__ = head
        for sub in getattr(exc, "exceptions", None) or ():
            _strip(sub, files, seen)
        _strip(exc.__cause__, files, seen)
        exc = exc.__context__


def _report(exc: BaseException, files: set[str], stderr_tty: bool) -> None:
    """Print an uncaught exception as python's PyErr_Print would."""
    _strip(exc, files, set())
    task.end_replay()  # a restored run that fails while replaying must still be heard
    if type(exc) is ModuleNotFoundError and hasattr(exc, "add_note"):
        # Packages come from the node the task runs on: say which one lacks it.
        exc.add_note(f"(running on mosix node {proxy.task_env.get('MOSIX_NODE', '?')}, "
                     "where this module is not installed)")
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        sys.stderr.write("sys.excepthook is missing\n")
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        return
    real_isatty = os.isatty
    if stderr_tty and hook is sys.__excepthook__ and sys.version_info >= (3, 13):
        # python 3.13+ colours tracebacks for a terminal: let stderr be one, as at home
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        os.isatty = lambda n: n == fd or real_isatty(n)
    try:
        hook(type(exc), exc, exc.__traceback__)
    except SystemExit:
        raise
    except BaseException as err:
        _strip(err, files, set())
        sys.stderr.write("Error in sys.excepthook:\n")
        sys.__excepthook__(type(err), err, err.__traceback__)
        sys.stderr.write("\nOriginal exception was:\n")
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
    finally:
        os.isatty = real_isatty


def _quiet(*args: object) -> None:
    """The excepthook while python finishes an exception that was already reported."""


def _register_source(code: object, source: str) -> None:
    """Give linecache the -c source, as python 3.13+ does (by name, later also by code)."""
    import linecache
    lines = [line + "\n" for line in source.splitlines()]
    linecache.cache["<string>"] = (len(source), None, lines, "<string>")
    register = getattr(linecache, "_register_code", None)
    if register is not None:
        register(code, source, "<string>")


def _fresh_main(main_keys: tuple[str, ...], kind: str) -> dict[str, object]:
    """Install a new ``__main__`` as python makes it (same names, same order) and return its
    namespace; the script's own names are set when it is read."""
    module = type(sys)("__main__")
    names = module.__dict__
    for key in main_keys:
        names.setdefault(key, None)
    names["__builtins__"] = sys.modules["builtins"]
    names["__loader__"] = sys.modules["_frozen_importlib"].BuiltinImporter
    if "__annotations__" in names:
        names["__annotations__"] = {}
    if kind in ("c", "m"):
        names.pop("__file__", None)
        names.pop("__cached__", None)
    sys.modules["__main__"] = module
    return names


def main(main_keys: tuple[str, ...], here: str, launcher: str) -> None:
    """Set the task up, run the program, end as python would. ``main_keys`` are the names
    python put in ``launch.py``'s globals, ``here`` its directory, ``launcher`` its code's
    file name (its frames are dropped from tracebacks like ours)."""
    env, kind, what, argv = _setup(here)
    names = _fresh_main(main_keys, kind)
    sys.argv = argv
    files = {launcher, *_PROXY_FILES}
    try:
        _run(kind, what, names, env)
    except SystemExit:
        raise
    except BaseException as exc:
        failure = exc
    else:
        return
    # Reported outside the handler, so that nothing chains to it implicitly.
    _report(failure, files, env.get("MOSIX_STDERR_TTY") == "1")
    sys.excepthook = _quiet  # python still exits 1, or dies of SIGINT for KeyboardInterrupt
    raise failure


def _setup(here: str) -> tuple[dict[str, str], str, str, list[str]]:
    """Read our environment, install the proxy: (our variables, kind, what, sys.argv)."""
    fd = os.environ.get("MOSIX_RUNTIME_FD", "")
    if not fd.isdigit():
        _die("MOSIX_RUNTIME_FD is not set: this program is started by mosixd to run a task")
    env = {key: os.environ.pop(key) for key in _PLUMBING if key in os.environ}
    env.update((key, os.environ[key]) for key in _VISIBLE if key in os.environ)
    home_cwd = env.get("MOSIX_HOME_CWD", "")
    if not home_cwd.startswith("/"):
        _die("MOSIX_HOME_CWD is not an absolute path")
    try:
        os.set_inheritable(int(fd), False)  # the user's child processes must not get it
    except OSError as exc:
        _die(f"MOSIX_RUNTIME_FD={fd}: {exc.strerror}")
    kind, what, argv = _parse(sys.argv[1:])
    roots = [home_cwd]
    if kind == "script":
        roots.append(os.path.dirname(_script_path(what, home_cwd)))
    site = sys.modules.get("site")
    local = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(here), getattr(site, "USER_SITE", None) or ""]
    install.install(channel.Channel(int(fd)), home_cwd, roots, local)
    if sys.stdin is not None:
        stdin.install()  # counted, so that a move resumes it where the program left it
    proxy.task_env = env
    if env.get("MOSIX_STDOUT_TTY") == "1" and sys.stdout and not sys.stdout.write_through:
        sys.stdout.reconfigure(line_buffering=True)  # python does this for a terminal
    if os.environ.get("MOSIX_RESTORE_FD"):
        task.await_checkpoint()  # a move's target: ready early, run once the checkpoint is here
    return env, kind, what, argv


def _script_path(typed: str, home_cwd: str) -> str:
    """The script's absolute path, made as python makes ``__file__``: not normalised."""
    return typed if typed.startswith("/") else home_cwd.rstrip("/") + "/" + typed


def _run(kind: str, what: str, names: dict[str, object], env: dict[str, str]) -> None:
    """Run the program: a script, -c code, -m module, or code read from stdin."""
    if kind == "script":
        script = _script_path(what, env["MOSIX_HOME_CWD"])
        _run_script(script, names, env.get("MOSIX_PROGRAM") or "python")
        return
    if kind == "m":
        if not sys.flags.safe_path:
            sys.path.insert(0, env["MOSIX_HOME_CWD"])
        import runpy
        runpy._run_module_as_main(what)
        return
    if not sys.flags.safe_path:
        sys.path.insert(0, "")
    if kind == "c":
        code = compile(what, "<string>", "exec", dont_inherit=True)
        if sys.version_info >= (3, 13):  # python 3.13+ shows -c lines in tracebacks
            _register_source(code, what)
    else:
        names["__file__"] = "<stdin>"
        code = compile(sys.stdin.buffer.read(), "<stdin>", "exec", dont_inherit=True)
    exec(code, names)


def _run_script(script: str, names: dict[str, object], program: str) -> None:
    """Read the script from home and run it in ``names``, as python runs a file."""
    try:
        reply, source = proxy.call("get", {"path": script, "offset": 0, "real": True}, script)
    except OSError as exc:
        if exc.errno == errno.EISDIR:  # python runs the directory's __main__.py
            if not sys.flags.safe_path:
                sys.path.insert(0, script)
            import runpy
            runpy._run_module_as_main("__main__", alter_argv=False)
            return
        sys.stderr.write(f"{program}: can't open file {script!r}: [Errno {exc.errno}] "
                         f"{exc.strerror}\n")
        raise SystemExit(2) from None
    if len(source) < reply.get("size", 0):
        source = proxy.fetch(script)
    directory = os.path.dirname(reply.get("real") or script)
    proxy.roots += (proxy.prefix(directory),)  # files beside the real script are home files too
    if not sys.flags.safe_path:
        sys.path.insert(0, directory)
    names["__file__"], names["__cached__"] = script, None
    names["__loader__"] = importer.HomeLoader("__main__", script)
    exec(compile(source, script, "exec", dont_inherit=True), names)

