"""The task runtime and the home file proxy, without a daemon.

The test plays both the daemon and mosrun: it starts ``mosrun/runtime/launch.py`` in an empty
scratch directory with one end of a socket pair, and serves the frames from the other end with a real
``HomeFiles`` over the home directory. Each program is also run by plain python in the home
directory, and the two runs must agree byte for byte: stdout, stderr, exit status, and the
files left at home.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mosrun.commands.homefs import HomeFiles
from mosrun.runtime import frames

RUNTIME = Path(frames.__file__).resolve().parent / "launch.py"
PYTHON = os.environ.get("MOSRUN_TEST_PYTHON", sys.executable)  # any python >= 3.11 to try
TIMEOUT = 30


@dataclass
class Run:
    """How a program ended: exit status (negative: killed by that signal), stdout, stderr."""

    code: int
    out: bytes
    err: bytes


def _serve(sock: socket.socket, files: HomeFiles) -> None:
    try:
        while (frame := frames.recv_frame(sock)) is not None:
            frames.send_frame(sock, *files.handle(*frame))
    except OSError:
        pass  # the task died mid-request
    finally:
        files.close_all()


def _finish(proc: subprocess.Popen[bytes], stdin: bytes, interrupt: bool) -> Run:
    """Feed stdin and collect the output; with ``interrupt``, send SIGINT (as Ctrl-C at home
    arrives) once the program printed its first line."""
    try:
        head = b""
        if interrupt:
            assert proc.stdout is not None
            head = proc.stdout.readline()
            time.sleep(0.2)  # past the print, into the work
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(stdin, timeout=TIMEOUT)
        return Run(proc.returncode, head + out, err)
    finally:
        proc.kill()


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


class Bench:
    """A home directory with the program's files, and the two ways of running it there."""

    def __init__(self, tmp: Path, files: dict[str, str | bytes],
                 links: dict[str, str] | None = None) -> None:
        self.home, self.scratch, self.files = tmp / "home", tmp / "scratch", files
        self.links = links or {}
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MOSIX_", "PYTHONUNBUFFERED", "PYTHONPATH"))}
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ at home in either run

    def reset(self) -> None:
        for root in (self.home, self.scratch):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
        for name, content in self.files.items():
            path = self.home / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(textwrap.dedent(content))
            else:
                path.write_bytes(content)
        for name, target in self.links.items():
            (self.home / name).symlink_to(target)

    def local(self, *args: str, stdin: bytes = b"", interrupt: bool = False,
              options: tuple[str, ...] = ()) -> Run:
        self.reset()
        proc = subprocess.Popen([PYTHON, *options, *args], cwd=self.home, env=self.env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        return _finish(proc, stdin, interrupt)

    def remote(self, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
               interrupt: bool = False, options: tuple[str, ...] = (),
               home: type[HomeFiles] = HomeFiles) -> Run:
        self.reset()
        ours, theirs = socket.socketpair()
        full_env = dict(self.env, MOSIX_RUNTIME_FD=str(theirs.fileno()),
                        MOSIX_HOME_CWD=str(self.home), MOSIX_PROGRAM=PYTHON,
                        MOSIX_TASK_ID="t1", MOSIX_HOME_NODE="n1", MOSIX_NODE="n2",
                        **(env or {}))
        with theirs:
            proc = subprocess.Popen([PYTHON, *options, str(RUNTIME), *args],
                                    pass_fds=[theirs.fileno()], cwd=self.scratch, env=full_env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        server = threading.Thread(target=_serve, args=(ours, home(str(self.home))),
                                  daemon=True)
        server.start()
        try:
            return _finish(proc, stdin, interrupt)
        finally:
            server.join(5)  # what the task sent before it ended is done, as the daemon does it
            ours.shutdown(socket.SHUT_RDWR)
            server.join(TIMEOUT)
            ours.close()

    def compare(self, *args: str, stdin: bytes = b"", interrupt: bool = False,
                options: tuple[str, ...] = ()) -> Run:
        """Run both ways; everything must match. Returns the remote run."""
        here = self.local(*args, stdin=stdin, interrupt=interrupt, options=options)
        here_tree = _tree(self.home)
        there = self.remote(*args, stdin=stdin, interrupt=interrupt, options=options)
        # The one intended difference: a missing module also names the node that lacks it.
        expected = re.sub(r"(ModuleNotFoundError: .*\n)", r"\1(running on mosix node n2, where this module is "
                          r"not installed)\n", here.err.decode(errors="replace"))
        assert there.err.decode(errors="replace") == expected
        assert there.out == here.out
        assert there.code == here.code
        assert _tree(self.home) == here_tree
        assert list(self.scratch.iterdir()) == []  # nothing landed on the host
        return there


HELPER = """\
def boom():
    table = {}
    return table["missing"]

class Thing:
    def method(self, n):
        return 10 // n
"""


# -- the program's output, exit status and tracebacks -------------------------------------------

PROGRAMS = {
    "prints": """\
        import sys
        print("one")
        print("two", flush=True)
        sys.stderr.write("err line\\n")
        print("three", end="")
        """,
    "exit3": "import sys\nprint('bye')\nsys.exit(3)\n",
    "exit_message": "import sys\nsys.exit('fatal: giving up')\n",
    "sigterm": "import os, signal\nprint('lost in the buffer')\n"
               "os.kill(os.getpid(), signal.SIGTERM)\n",
    "binary": """\
        import sys
        block = bytes(range(256)) * 4096
        for _ in range(8):
            sys.stdout.buffer.write(block)
        print("tail")
        """,
    "stdin": "import sys\ndata = sys.stdin.read()\n"
             "print(len(data), data[:12], data.count('\\n'))\n",
    "raise_here": """\
        def outer():
            return inner(0)
        def inner(n):
            return 1 / n
        print("before")
        outer()
        """,
    "raise_in_module": "import helper\nprint('start')\nhelper.Thing().method(0)\n",
    "raise_importing": "import broken\n",
    "chained": """\
        import helper
        try:
            helper.boom()
        except KeyError as exc:
            raise RuntimeError("while booming") from exc
        """,
    "context": """\
        try:
            open("no/such/file.txt")
        except OSError:
            int("not a number")
        """,
    "keyboard_interrupt": """\
        import atexit
        atexit.register(print, "atexit ran")
        print("working")
        def work():
            raise KeyboardInterrupt
        work()
        """,
    "excepthook": """\
        import sys
        def hook(kind, value, tb):
            print("hooked:", kind.__name__, value, tb.tb_frame.f_code.co_filename)
        sys.excepthook = hook
        raise ValueError("custom")
        """,
    "bad_excepthook": "import sys\nsys.excepthook = lambda *a: 1 / 0\nraise ValueError('x')\n",
    "thread": """\
        import threading, helper
        t = threading.Thread(target=helper.boom)
        t.start()
        t.join()
        print("main goes on")
        """,
    "atexit_order": """\
        import atexit, sys
        atexit.register(lambda: print("first registered, last run"))
        atexit.register(lambda: sys.stderr.write("second\\n"))
        print("body")
        raise SystemExit(5)
        """,
    "syntax_error": "print('fine')\ndef broken(:\n    pass\n",
    "exception_group": """\
        raise ExceptionGroup("several", [ValueError("a"), TypeError("b")])
        """,
    "caught_traceback": """\
        import traceback, helper
        try:
            helper.boom()
        except KeyError:
            traceback.print_exc()
        print("recovered")
        """,
    "open_modes": """\
        import io
        for mode, kw in [("rr", {}), ("rbt", {}), ("rw", {}), ("b", {}), ("+", {}), ("t", {}),
                         ("b", {"encoding": "x"}), ("rb", {"errors": "x"}), ("x", {}),
                         ("rb", {"newline": ""}), ("r", {"buffering": 0}), ("rU", {}),
                         ("r", {"newline": "z"}), ("r", {"closefd": False}), (3, {}),
                         ("rb", {"buffering": 0}), ("a+", {}), ("r+b", {})]:
            try:
                with open("helper.py", mode, **kw) as f:
                    kind = "raw" if isinstance(f, io.RawIOBase) else type(f).__name__
                    print(mode, kw, f.mode, repr(f.read(5)), kind)
            except Exception as exc:
                print(mode, kw, type(exc).__name__, exc)
        """,
    "unclosed_files": """\
        import helper
        log = open("log.txt", "w")
        log.write("written, never closed\\n")
        helper.keep = open("kept.bin", "wb")
        helper.keep.write(b"held by a module global")
        class Cycle:
            pass
        c = Cycle()
        c.me, c.f = c, open("cycle.txt", "a")
        c.f.write("in a reference cycle\\n")
        del c
        print("done")
        """,
    "main_module": """\
        import sys
        print(sys.argv, sys.path[0], __file__, __name__, __spec__, __package__, __cached__)
        print(list(globals()), __builtins__.__name__, __doc__, __annotations__)
        print(sys.modules["__main__"].__dict__ is globals())
        print(__loader__.get_source("__main__").splitlines()[0])
        """,
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_runs_as_at_home(tmp_path: Path, name: str) -> None:
    files = {"prog.py": PROGRAMS[name], "helper.py": HELPER,
             "broken.py": "import helper\nx = 1\nhelper.Thing().method(0)\n"}
    bench = Bench(tmp_path, files)
    run = bench.compare("prog.py", "arg one", "--flag",
                        stdin=b"line\n" * 1000 if name == "stdin" else b"")
    expected = {"exit3": 3, "exit_message": 1, "sigterm": -signal.SIGTERM, "prints": 0,
                "keyboard_interrupt": -signal.SIGINT, "atexit_order": 5}
    if name in expected:
        assert run.code == expected[name]
    if name.startswith("raise"):
        assert b"mosrun/runtime" not in run.err and b"proxy" not in run.err
        assert b"    return " in run.err  # source lines came from home


def test_ctrl_c_from_home(tmp_path: Path) -> None:
    busy = "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    files = """\
        print("ready", flush=True)
        n = 0
        while True:
            with open("data.txt") as f:
                n += len(f.read())
        """
    bench = Bench(tmp_path, {"busy.py": busy, "files.py": files, "data.txt": "x" * 1000})
    assert bench.compare("busy.py", interrupt=True).code == -signal.SIGINT
    run = bench.remote("files.py", interrupt=True)  # interrupted while asking home
    assert run.code == -signal.SIGINT, run.err
    assert run.err.startswith(b"Traceback (most recent call last):\n  File ")
    assert run.err.endswith(b"KeyboardInterrupt\n") and b"mosrun" not in run.err, run.err


def test_script_elsewhere_and_directories(tmp_path: Path) -> None:
    files = {"sub/prog.py": "import sys, mod\nprint(sys.argv[0], sys.path[0], __file__)\n"
                            "mod.fail()\n",
             "sub/mod.py": "def fail():\n    raise OSError(5, 'boom')\n",
             "app/__main__.py": "import sys\nprint(sys.argv, sys.path[0], __file__)\n"}
    bench = Bench(tmp_path, files)
    bench.compare("sub/prog.py")
    bench.compare(str(bench.home / "sub" / "prog.py"))
    bench.compare("./sub/../sub/prog.py")
    bench.compare("app", "x")  # a directory: its __main__.py


def test_interpreter_options(tmp_path: Path) -> None:
    prog = ("import sys\nprint(sys.flags.safe_path, sys.path[0] != '', sys.stdout.write_through)\n"
            "import helper\n")
    bench = Bench(tmp_path, {"prog.py": prog, "helper.py": "print('helper')\n"})
    bench.compare("prog.py", options=("-u",))
    assert bench.compare("prog.py", options=("-P",)).code == 1  # no script dir: no helper
    bench.compare("-c", "import sys; print(sys.path[:1])", options=("-I",))


def test_missing_script(tmp_path: Path) -> None:
    run = Bench(tmp_path, {}).compare("nowhere.py", "x")
    assert run.code == 2
    assert run.err == (f"{PYTHON}: can't open file "
                       f"'{tmp_path / 'home' / 'nowhere.py'}': [Errno 2] No such file or "
                       f"directory\n").encode()


def test_dash_c(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"helper.py": "X = 42\n", "data.txt": "payload\n"})
    code = ("import sys, os, helper; print(sys.argv, repr(sys.path[0]), helper.X, "
            "os.getcwd() == os.path.dirname(helper.__file__), open('data.txt').read())")
    bench.compare("-c", code, "a", "b")
    bench.compare("-c", "import helper\nhelper.nothing()\n")


def test_dash_m(tmp_path: Path) -> None:
    files = {"tool.py": """\
                 import sys
                 print(sys.argv, sys.path[0], __name__, __file__, __spec__.name, __cached__)
                 if sys.argv[1:] == ["fail"]:
                     import helper
                     helper.boom()
                 """,
             "pkg/__init__.py": "", "pkg/__main__.py": "import sys\nprint('pkg main', sys.argv)\n",
             "helper.py": HELPER}
    bench = Bench(tmp_path, files)
    bench.compare("-m", "tool", "a", "b")
    assert bench.compare("-m", "tool", "fail").code == 1
    bench.compare("-m", "pkg", "x")
    assert bench.compare("-m", "nosuchmodule").code == 1


def test_stdin_program(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"helper.py": "X = 7\n"})
    bench.compare("-", "a", stdin=b"import sys, helper\nprint(sys.argv, helper.X, __file__)\n")


def test_line_buffered_stdout_for_a_terminal(tmp_path: Path) -> None:
    bench = Bench(tmp_path, {"prog.py": "import sys\nprint(sys.stdout.line_buffering, "
                                        "sys.stderr.line_buffering)\n"})
    assert bench.remote("prog.py", env={"MOSIX_STDOUT_TTY": "1"}).out == b"True True\n"
    assert bench.remote("prog.py", env={"MOSIX_STDOUT_TTY": ""}).out == b"False True\n"


def test_environment_and_path_are_the_users(tmp_path: Path) -> None:
    prog = """\
        import os, sys
        print(sorted(k for k in os.environ if k.startswith("MOSIX")))
        print([p for p in sys.path if p.endswith("mosrun")])
        print(sys.modules["mosrun.runtime.launch"].__name__, "mosrun.runtime.proxy" in sys.modules)
        import mosrun  # found even where this interpreter does not have it installed
        print(mosrun.__name__)
        """
    run = Bench(tmp_path, {"prog.py": prog}).remote("prog.py")
    # Only the task's identity stays visible, as for non-Python tasks; the plumbing is gone.
    assert run.out == (b"['MOSIX_HOME_NODE', 'MOSIX_NODE', 'MOSIX_TASK_ID']\n[]\n__main__ True\nmosrun\n"), run.err


def test_without_a_daemon_socket_it_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([PYTHON, str(RUNTIME), "x.py"], capture_output=True,
                          timeout=TIMEOUT, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("MOSIX_")})
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1 and b"MOSIX_RUNTIME_FD" in proc.stderr


# -- files at home -----------------------------------------------------------------------------

FILEOPS = """\
import os, pathlib, shutil, json, glob

def show(label, fn):
    try:
        print(label, fn())
    except Exception as exc:
        print(label, type(exc).__name__, exc, repr(getattr(exc, "filename", None)))

rows = open("data/input.csv").read().splitlines()
os.makedirs("out", exist_ok=True)
os.makedirs("out", exist_ok=True)
with open("out/result.json", "w") as f:
    json.dump({"rows": len(rows), "first": rows[0]}, f)
show("cwd", lambda: os.getcwd() == os.path.dirname(os.path.abspath(__file__)))
show("listdir", lambda: sorted(os.listdir()))
show("listdir bytes", lambda: sorted(os.listdir(b"data")))
with os.scandir("data") as it:
    show("scandir", lambda: sorted((e.name, e.path, e.is_dir(), e.is_file(), e.is_symlink(),
                                    e.stat().st_size) for e in it))
show("walk", lambda: sorted((d, sorted(fs)) for d, _, fs in os.walk(".")))
show("glob", lambda: sorted(glob.glob("data/*.csv")))
show("exists", lambda: (os.path.exists("data"), os.path.isdir("data"),
                        os.path.isfile("data/input.csv"), os.path.exists("nope"),
                        os.path.getsize("data/input.csv"), os.path.islink("link.txt"),
                        os.path.getmtime("data/input.csv") > 0))
p = pathlib.Path("notes.txt")
show("write_text", lambda: p.write_text("héllo\\nworld\\n", encoding="utf-8"))
show("read_text", lambda: p.read_text(encoding="utf-8"))
show("read_bytes", lambda: p.read_bytes())
show("path stat", lambda: (p.stat().st_size, p.exists(), p.is_file(), p.is_dir()))
show("iterdir", lambda: sorted(str(x) for x in pathlib.Path("data").iterdir()))
show("resolve", lambda: pathlib.Path("link.txt").resolve() == pathlib.Path("notes.txt").absolute())
with open("log.txt", "a") as f:
    f.write("first\\n")
with open("log.txt", "a") as f:
    f.write("second\\n")
show("append", lambda: open("log.txt").read())
with open("bin.dat", "wb") as f:
    f.write(bytes(range(256)))
with open("bin.dat", "r+b") as f:
    f.seek(10)
    show("tell", lambda: (f.tell(), f.read(5), f.tell()))
    f.seek(-3, os.SEEK_END)
    show("end", lambda: (f.read(), f.tell()))
    f.seek(0)
    f.write(b"XY")
    show("after write", lambda: (f.tell(), f.read(2)))
show("unbuffered", lambda: open("bin.dat", "rb", buffering=0).read(4))
show("text seek", lambda: (lambda f: (f.readline(), f.tell(), f.read()))(open("log.txt")))
show("newline", lambda: open("crlf.txt", "w", newline="\\r\\n").write("a\\nb\\n"))
show("crlf", lambda: (open("crlf.txt", "rb").read(), open("crlf.txt", newline="").read()))
show("replace", lambda: os.replace("notes.txt", "out/notes.txt"))
show("rename", lambda: os.rename("log.txt", "out/log.txt"))
show("remove", lambda: os.remove("crlf.txt"))
show("exclusive", lambda: open("bin.dat", "x"))
show("access", lambda: (os.access("bin.dat", os.R_OK), os.access("nope", os.F_OK)))
show("chdir", lambda: (os.chdir("out"), os.getcwd().endswith("/out"), sorted(os.listdir()))[1:])
show("relative after chdir", lambda: open("log.txt").read())
show("chdir back", lambda: os.chdir(".."))
show("copy", lambda: shutil.copy("bin.dat", "out/copy.dat"))
show("copytree", lambda: shutil.copytree("data", "data2") and sorted(os.listdir("data2")))
show("rmtree", lambda: shutil.rmtree("data2"))
show("symlink", lambda: (os.symlink("bin.dat", "ln"), os.readlink("ln"), os.path.islink("ln"),
                         os.lstat("ln").st_size, os.stat("ln").st_size))
show("hard link", lambda: (os.link("bin.dat", "hard"), os.stat("hard").st_nlink))
show("touch", lambda: (pathlib.Path("flag").touch(), pathlib.Path("flag").exists()))
show("os.open", lambda: (lambda fd: (os.write(fd, b"raw"), os.lseek(fd, 0, 0), os.read(fd, 9),
                                     os.fstat(fd).st_size, os.close(fd)))(
                                         os.open("rawfile", os.O_RDWR | os.O_CREAT, 0o644))[1:])
show("fdopen", lambda: (lambda f: (f.write("via fdopen"), f.close()))(
    os.fdopen(os.open("rawfile", os.O_WRONLY | os.O_TRUNC), "w")))
show("missing open", lambda: open("missing.txt"))
show("missing bytes", lambda: os.stat(b"missing"))
show("missing path", lambda: pathlib.Path("missing").read_text())
show("mkdir exists", lambda: os.mkdir("out"))
show("makedirs blocked", lambda: os.makedirs("bin.dat/a/b"))
show("listdir file", lambda: os.listdir("bin.dat"))
show("rename missing", lambda: os.rename("nope", "nope2"))
show("rmdir full", lambda: os.rmdir("out"))
show("open dir", lambda: open("out"))
show("bad mode", lambda: open("bin.dat", "rw"))
show("text unbuffered", lambda: open("bin.dat", "r", buffering=0))
show("write to reader", lambda: open("bin.dat").write("x"))
show("abs under home", lambda: open(os.path.abspath("bin.dat"), "rb").read(2))
show("host file", lambda: open("/proc/self/status").readline().split()[0])
"""


def test_files_act_at_home(tmp_path: Path) -> None:
    files = {"prog.py": FILEOPS, "data/input.csv": "a,b\n1,2\n3,4\n", "data/extra.csv": "x\n",
             "data/sub/deep.txt": "deep\n"}
    bench = Bench(tmp_path, files, links={"link.txt": "notes.txt"})
    run = bench.compare("prog.py")
    assert b"Error" in run.out and b"missing.txt" in run.out
    result = json.loads((bench.home / "out" / "result.json").read_text())
    assert result == {"rows": 3, "first": "a,b"}


def test_imports_from_home(tmp_path: Path) -> None:
    files = {"prog.py": """\
                 import importlib, inspect, linecache, sys
                 import pkg.sub, pkg.data_user, nspace.mod, json
                 print(pkg.__file__, pkg.__path__, pkg.sub.VALUE, pkg.data_user.read())
                 print(nspace.mod.__name__, list(nspace.__path__))
                 print(inspect.getsource(pkg.sub.f).strip())
                 print(linecache.getline(pkg.sub.__file__, 2).strip())
                 print(json.__file__.startswith(sys.prefix) or json.__file__.startswith(
                     sys.base_prefix))
                 with open("late.py", "w") as f:
                     f.write("LATE = 1\\n")
                 import late
                 print(late.LATE)
                 import runpy
                 print(runpy.run_path("pkg/sub.py")["VALUE"])
                 try:
                     import not_installed_anywhere
                 except ImportError as exc:
                     print(type(exc).__name__, exc)
                 """,
             "pkg/__init__.py": "", "pkg/sub.py": "VALUE = 3\ndef f():\n    return VALUE\n",
             "pkg/data_user.py": "import importlib.resources\n"
                                 "def read():\n"
                                 "    return importlib.resources.files('pkg').joinpath("
                                 "'res.txt').read_text()\n",
             "pkg/res.txt": "resource\n", "nspace/mod.py": "X = 1\n"}
    Bench(tmp_path, files).compare("prog.py")


def test_forked_child_gets_a_clear_error(tmp_path: Path) -> None:
    prog = """\
        import os
        pid = os.fork()
        if pid == 0:
            try:
                open("data.txt")
            except OSError as exc:
                print("child:", exc, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent:", open("data.txt").read())
        """
    run = Bench(tmp_path, {"prog.py": prog, "data.txt": "home data"}).remote("prog.py")
    assert run.out.splitlines() == [
        b"child: [Errno 104] home files are not available in a forked child of a remote task",
        b"parent: home data"], run.err


def test_interrupts_do_not_break_the_channel(tmp_path: Path) -> None:
    # A signal handler that raises can fire in the middle of a request: the request is
    # finished first, then the exception is raised, and later requests still work.
    prog = """\
        import signal
        class Tick(Exception):
            pass
        armed = False
        def tick(*args):
            if armed:  # only inside the try below
                raise Tick
        signal.signal(signal.SIGALRM, tick)
        print(signal.getsignal(signal.SIGALRM) is tick,
              signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        ticks = 0
        for i in range(1500):
            try:
                armed = True
                with open("count.txt", "w") as f:
                    f.write(str(i))
                open("count.txt").read()
                armed = False
            except Tick:
                armed = False
                ticks += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        with open("count.txt", "w") as f:
            f.write("final")
        print(ticks > 0, open("count.txt").read() == "final")
        """
    run = Bench(tmp_path, {"prog.py": prog}).remote("prog.py")
    assert run.out == b"True True\nTrue True\n" and run.code == 0, run.err


def test_threads_share_the_channel(tmp_path: Path) -> None:
    prog = """\
        import os, threading
        errors = []
        def work(k):
            try:
                for i in range(60):
                    with open(f"t{k}.txt", "w") as f:
                        f.write(f"{k}:{i}\\n" * (i + 1))
                    with open(f"t{k}.txt") as f:
                        assert f.read() == f"{k}:{i}\\n" * (i + 1)
                    assert os.path.getsize(f"t{k}.txt") == len(f"{k}:{i}\\n") * (i + 1)
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(errors, sorted(os.listdir()))
        """
    Bench(tmp_path, {"prog.py": prog}).compare("prog.py")


def test_big_file_round_trip(tmp_path: Path) -> None:
    prog = """\
        import hashlib, os
        block = os.urandom(1 << 20)
        with open("big.bin", "wb") as f:
            for _ in range(9):
                f.write(block)
        with open("big.bin", "rb") as f:
            data = f.read()
        print(len(data), data == block * 9, os.path.getsize("big.bin"))
        with open("big.bin", "rb") as f:
            n = 0
            while chunk := f.read(300_000):
                n += len(chunk)
        print(n)
        """
    bench = Bench(tmp_path, {"prog.py": prog})
    run = bench.remote("prog.py")
    assert run.out == b"9437184 True 9437184\n9437184\n", run.err
    assert (bench.home / "big.bin").stat().st_size == 9 << 20


# -- HomeFiles alone -----------------------------------------------------------------------------

def test_homefiles_rejects_malformed_requests(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    bad = [{"t": "fs", "op": "launch_missiles"}, {"t": "fs"}, {"t": "fs", "op": 3},
           {"t": "fs", "op": "stat"}, {"t": "fs", "op": "stat", "path": 7},
           {"t": "fs", "op": "read", "h": True, "n": 5}, {"t": "fs", "op": "read", "h": 1},
           {"t": "fs", "op": "open", "path": "x", "flags": ["O_EVIL"]},
           {"t": "fs", "op": "open", "path": "x", "flags": "O_RDONLY"},
           {"t": "fs", "op": "stat", "path": "x", "follow": "yes"},
           {"t": "fs", "op": "utime", "path": "x", "times": [1]},
           {"t": "fs", "op": "listdir", "path": ".", "start": -1},
           {"t": "fs", "op": "find", "dir": ".", "name": "../x"},
           {"t": "fs", "op": "stat", "path": "a\0b"}]
    for header in bad:
        reply, payload = files.handle(header, b"")
        assert reply["t"] == "fs_reply" and reply["ok"] is False, header
        assert reply["errno"] == errno.EINVAL and reply["strerror"], header
        assert payload == b""
    reply, _ = files.handle({"t": "fs", "op": "close", "h": 99, "id": 4}, b"")
    assert (reply["ok"], reply["errno"], reply["id"]) == (False, errno.EBADF, 4)
    reply, _ = files.handle(["not", "a", "dict"], b"")  # type: ignore[arg-type]
    assert reply["errno"] == errno.EINVAL


def test_homefiles_operations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = HomeFiles(str(tmp_path))
    reply, _ = files.handle({"t": "fs", "op": "open", "path": str(tmp_path / "f"),
                             "flags": ["O_RDWR", "O_CREAT"], "perm": 0o600}, b"")
    h = reply["h"]
    assert files.handle({"t": "fs", "op": "write", "h": h}, b"hello")[0]["n"] == 5
    assert files.handle({"t": "fs", "op": "seek", "h": h, "pos": 1, "whence": 0},
                        b"")[0]["pos"] == 1
    assert files.handle({"t": "fs", "op": "read", "h": h, "n": 100}, b"")[1] == b"ello"
    reply, _ = files.handle({"t": "fs", "op": "stat", "path": "f"}, b"")  # relative: to cwd
    assert reply["ok"] and reply["st"][6] == 5 and reply["x"]["st_mtime_ns"] > 0
    reply, _ = files.handle({"t": "fs", "op": "open", "path": str(tmp_path / "nope"),
                             "flags": ["O_RDONLY"]}, b"")
    assert (reply["errno"], reply["filename"]) == (errno.ENOENT, str(tmp_path / "nope"))
    reply, _ = files.handle({"t": "fs", "op": "open", "path": str(tmp_path), "flags":
                             ["O_RDONLY"], "nodir": True}, b"")
    assert reply["errno"] == errno.EISDIR
    files.close_all()
    assert files.handle({"t": "fs", "op": "read", "h": h, "n": 1}, b"")[0]["errno"] == errno.EBADF
    # Big directories are listed in pages.
    monkeypatch.setattr("mosrun.commands.homefs.LIST_PAGE", 64)
    for i in range(30):
        (tmp_path / f"name{i:02}").touch()
    names, start = [], 0
    while start is not None:
        reply, data = files.handle({"t": "fs", "op": "listdir", "path": str(tmp_path),
                                    "start": start}, b"")
        names += data.split(b"\0")[:-1]
        start = reply["next"]
    assert sorted(names) == sorted(os.fsencode(n) for n in os.listdir(tmp_path))
    monkeypatch.setattr("mosrun.commands.homefs.MODULE_INDEX_LIMIT", 5)
    (tmp_path / "mod.py").touch()
    assert files.handle({"t": "fs", "op": "modules", "dir": str(tmp_path)}, b"")[0]["big"]
    assert files.handle({"t": "fs", "op": "find", "dir": str(tmp_path), "name": "mod"},
                        b"")[0]["kind"] == "m"


# -- streaming: write-behind and read-ahead ---------------------------------------------------------

STREAMING = """\
import hashlib, os, sys

MiB = 1 << 20
CHUNK = 4 * MiB
SIZES = [0, 1, MiB - 1, MiB, MiB + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345,
         17 * MiB + 3]

def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]

def pattern(n, seed):
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32 + 1)
    return (block * (n // len(block) + 1))[:n]

for size in SIZES:
    data = pattern(size, size)
    name = f"f{size}.bin"
    with open(name, "wb") as f:                  # one big write
        f.write(data)
    with open(name + ".small", "wb") as f:       # many small writes, through the buffer
        for start in range(0, size, 100_003):
            f.write(data[start:start + 100_003])
    with open(name, "rb") as f:
        whole = f.read()
    with open(name + ".small", "rb") as f:       # odd-sized reads
        parts = []
        while block := f.read(300_007):
            parts.append(block)
    with open(name, "rb", buffering=0) as f:     # raw readinto of MiB pieces
        buf, got = bytearray(MiB + 5), []
        while n := f.readinto(buf):
            got.append(bytes(buf[:n]))
    print(size, os.path.getsize(name), whole == data, b"".join(parts) == data,
          b"".join(got) == data, digest(whole))

with open("text.txt", "w") as f:
    for i in range(200_000):
        print(f"line {i} " + "x" * (i % 97), file=f)
with open("text.txt") as f:
    lines = sum(1 for _ in f)
with open("text.txt") as f:
    f.readline()
    where = f.tell()
    rest = f.read()
    f.seek(where)
    again = f.read()
print(lines, where, rest == again, len(rest))
"""


def test_large_files_written_and_read_back_identical(tmp_path: Path) -> None:
    run = Bench(tmp_path, {"prog.py": STREAMING}).compare("prog.py")
    assert run.out.count(b"True True True") == 10, run.out


class _FullDisk(HomeFiles):
    """Home whose disk fills up: a write that would take "out.bin" past 5 MiB fails with
    ENOSPC, as would one to a full file system."""

    LIMIT = 5 << 20

    def handle(self, header: dict, payload: bytes | memoryview):  # type: ignore[override]
        if header.get("op") == "write":
            fd = self._files.get(header.get("h"))  # type: ignore[arg-type]
            if fd is not None and os.readlink(f"/proc/self/fd/{fd}").endswith("/out.bin"):
                end = header["at"] + len(payload) if "at" in header else os.fstat(fd).st_size + len(payload)
                if end > self.LIMIT:
                    return {"t": "fs_reply", "id": header["id"], "ok": False,
                            "errno": errno.ENOSPC, "strerror": os.strerror(errno.ENOSPC),
                            "filename": None, "filename2": None}, b""
        return super().handle(header, payload)


def test_a_late_write_error_is_raised_at_close_or_flush(tmp_path: Path) -> None:
    prog = """\
        import errno, os
        block = b"z" * (3 << 20)
        def attempt(label, steps):
            try:
                for step in steps:
                    step()
                print(label, "no error")
            except OSError as exc:
                print(label, step.__name__, errno.errorcode[exc.errno], exc.filename)
        f = open("out.bin", "wb")
        def write_twice():
            f.write(block)      # 3 MiB: fits
            f.write(block)      # past 5 MiB: refused, but the write returns before home says so
        attempt("close", [write_twice, f.close])
        print(f.closed, os.path.getsize("out.bin"))
        f = open("out.bin", "r+b")
        f.seek(0, os.SEEK_END)
        attempt("flush", [write_twice, f.flush])
        attempt("after", [f.close])        # reported once
        f = open("out.bin", "wb", buffering=0)
        def direct():
            f.write(block)
            f.write(block)
        attempt("unbuffered", [direct, f.close])    # no buffer: the write itself fails
        f.close()
        g = open("other.bin", "wb")
        g.write(block * 3)                           # other files are not limited
        g.close()
        print(os.path.getsize("other.bin"))
        """
    run = Bench(tmp_path, {"prog.py": prog}).remote("prog.py", home=_FullDisk)
    assert run.out.decode().splitlines() == [
        "close close ENOSPC out.bin",
        "True 3145728",
        "flush flush ENOSPC out.bin",
        "after no error",
        "unbuffered direct ENOSPC None",
        str(9 << 20),
    ], run.err
    assert run.code == 0, run.err


INTERLEAVED = """\
import hashlib, io, os, random

MiB = 1 << 20
rng = random.Random(7)
with open("data.bin", "wb") as f:
    f.write(rng.randbytes(6 * MiB + 333))

def h(data):
    return hashlib.sha256(data).hexdigest()[:12]

log = []
for buffering in (-1, 0, 4096):
    with open("data.bin", "r+b", buffering=buffering) as f:
        for step in range(300):
            op = rng.random()
            if op < 0.35:
                n = rng.choice([1, 100, 4096, MiB - 7, MiB, 2 * MiB + 1, 5 * MiB])
                log.append(("read", n, h(f.read(n)), f.tell()))
            elif op < 0.55:
                n = rng.choice([1, 10, 5000, MiB + 3, 3 * MiB])
                log.append(("write", f.write(rng.randbytes(n)), f.tell()))
            elif op < 0.8:
                whence = rng.choice([0, 1, 2])
                offset = rng.randrange(-MiB, 7 * MiB) if whence else rng.randrange(8 * MiB)
                try:
                    log.append(("seek", f.seek(offset, whence)))
                except OSError as exc:
                    log.append(("seek", "error", exc.errno))
            elif op < 0.85:
                log.append(("truncate", f.truncate(rng.randrange(8 * MiB)), f.tell()))
            elif op < 0.9:
                f.flush()
                log.append(("flush", os.path.getsize("data.bin")))
            else:
                log.append(("tell", f.tell()))
print(h(repr(log).encode()), len(log))
for entry in log[:40]:
    print(entry)

# A file read sequentially (so, read ahead) while another handle changes what lies ahead.
with open("data.bin", "wb") as f:
    f.write(b"a" * (12 * MiB))
reader = open("data.bin", "rb", buffering=0)
first = reader.read(MiB)
second = reader.read(MiB)
with open("data.bin", "r+b") as w:
    w.seek(3 * MiB)
    w.write(b"b" * MiB)
print(first.count(b"a"), second.count(b"a"), [reader.read(MiB).count(b"b") for _ in range(3)])
fd = os.open("data.bin", os.O_RDWR)
os.lseek(fd, 6 * MiB, 0)
os.write(fd, b"c" * 1000)
print(reader.read(MiB).count(b"a"), reader.read(MiB)[:1000].count(b"c"))
os.ftruncate(fd, 8 * MiB)
os.close(fd)
print(len(reader.read()), reader.tell())
reader.close()
os.truncate("data.bin", 100)
print(os.path.getsize("data.bin"))
"""


def test_interleaved_reads_seeks_and_writes_as_local(tmp_path: Path) -> None:
    run = Bench(tmp_path, {"prog.py": INTERLEAVED}).compare("prog.py")
    assert run.code == 0 and b"('write'" in run.out, run.err


def test_threads_stream_at_once(tmp_path: Path) -> None:
    prog = """\
        import hashlib, threading
        MiB = 1 << 20
        def work(k, out):
            data = bytes([k]) * (5 * MiB + k)
            with open(f"t{k}.bin", "wb") as f:
                for start in range(0, len(data), 700_000):
                    f.write(data[start:start + 700_000])
            with open(f"t{k}.bin", "rb") as f:
                out[k] = f.read() == data
        out = {}
        threads = [threading.Thread(target=work, args=(k, out)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(sorted(out.items()))
        """
    Bench(tmp_path, {"prog.py": prog}).compare("prog.py")


def test_writes_not_waited_for_are_done_when_the_task_dies(tmp_path: Path) -> None:
    # What reached the raw file is the OS's locally, and home's here, even without close().
    prog = "import os\nf = open('out.bin', 'wb')\nf.write(b'q' * (9 << 20))\nos._exit(0)\n"
    Bench(tmp_path, {"prog.py": prog}).compare("prog.py")


def test_a_writer_faster_than_home_blocks(tmp_path: Path) -> None:
    """Home stops answering: the task sends at most the window, then waits (bounded memory)."""
    prog = ("import sys\nblock = b'w' * (1 << 20)\nwith open('out.bin', 'wb') as f:\n"
            "    for _ in range(64):\n        f.write(block)\n"
            "    print('all sent', flush=True)\nprint('done')\n")
    bench = Bench(tmp_path, {"prog.py": prog})
    bench.reset()
    ours, theirs = socket.socketpair()
    env = dict(bench.env, MOSIX_RUNTIME_FD=str(theirs.fileno()), MOSIX_HOME_CWD=str(bench.home),
               MOSIX_PROGRAM=PYTHON)
    output = tmp_path / "stdout.txt"
    with theirs, output.open("wb") as stdout:
        proc = subprocess.Popen([PYTHON, str(RUNTIME), "prog.py"], pass_fds=[theirs.fileno()],
                                cwd=bench.scratch, env=env, stdout=stdout,
                                stderr=subprocess.PIPE)
    files, held, received = HomeFiles(str(bench.home)), [], [0]
    release = threading.Event()

    def serve() -> None:
        while (frame := frames.recv_frame(ours)) is not None:
            if frame[0].get("op") == "write" or held:
                received[0] += len(frame[1])
                if not release.is_set():
                    held.append(frame)  # no reply, and none to anything after it
                    continue
                for early in held:
                    frames.send_frame(ours, *files.handle(*early))
                held.clear()
            frames.send_frame(ours, *files.handle(*frame))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while received[0] < 8 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # time to send more, if it were going to
        assert proc.poll() is None and output.read_bytes() == b"", output.read_bytes()
        assert 8 << 20 <= received[0] <= 16 << 20, received[0]  # the window: 16 MiB
        rss = int(re.search(rb"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_bytes())[1])
        assert rss < 64 << 10, rss  # KiB: it buffered nothing of its own either
        release.set()
        frames.send_frame(ours, *files.handle(*held.pop(0)))  # wakes the task: the rest follow
        _, err = proc.communicate(timeout=TIMEOUT)
        assert (proc.returncode, output.read_bytes()) == (0, b"all sent\ndone\n"), err
        assert (bench.home / "out.bin").stat().st_size == 64 << 20
    finally:
        proc.kill()
        ours.shutdown(socket.SHUT_RDWR)
        server.join(TIMEOUT)
        ours.close()


def test_homefiles_writes_not_waited_for(tmp_path: Path) -> None:
    files = HomeFiles(str(tmp_path))
    reply, _ = files.handle({"t": "fs", "op": "open", "path": str(tmp_path / "f"),
                             "flags": ["O_RDWR", "O_CREAT"], "perm": 0o600}, b"")
    h, ident = reply["h"], reply["file"]
    info = os.stat(tmp_path / "f")
    assert ident == [info.st_dev, info.st_ino]
    # At an offset, all of it, leaving the position alone; or at the position, all of it.
    reply, _ = files.handle({"t": "fs", "op": "write", "h": h, "at": 3},
                            memoryview(b"abc" * 100_000))
    assert reply["ok"] and reply["n"] == 300_000
    assert files.handle({"t": "fs", "op": "seek", "h": h, "pos": 0, "whence": 1},
                        b"")[0]["pos"] == 0
    assert files.handle({"t": "fs", "op": "write", "h": h, "all": True}, b"xy")[0]["n"] == 2
    assert (tmp_path / "f").read_bytes() == b"xy\0" + b"abc" * 100_000
    reply, _ = files.handle({"t": "fs", "op": "write", "h": h, "at": "3"}, b"z")
    assert reply["errno"] == errno.EINVAL
    reply, _ = files.handle({"t": "fs", "op": "write", "h": h, "at": -1}, b"z")
    assert reply["errno"] == errno.EINVAL
    files.close_all()
