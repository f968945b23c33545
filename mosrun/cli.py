"""``mosrun``: run a program on the best node of the cluster, with this machine as its home.

Standard library only and little of it, so that starting a task costs barely more than
starting Python. mosrun stays connected to its home daemon for the task's whole life: it
forwards stdin and signals through it, and exits with the task's status. The task's stdout,
stderr and file requests come to mosrun directly from the node running it
(``mosrun.dataplane``): mosrun writes the output and performs the file operations of a Python
task here as this user (``mosrun.homefs``).

Exit codes: the task's own code, or 128+N when it died of signal N; 2 usage (and, as with
python, a script that cannot be opened); 125 the task could not be started (no daemon, unknown
node, no node can take it); 127 command not found; 255 the node running the task was lost.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import sys
from typing import Any

from mosrun import frames
from mosrun.dataplane import DataPlane

EXIT_USAGE = 2
EXIT_LAUNCH = 125
EXIT_NOT_FOUND = 127
EXIT_LOST = 255
SYSTEM_SESSION = "/run/mosix/mosrun.sock"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
OUT_HIGH_WATER = 1 << 20   # stop reading stdin while this much is waiting to reach the daemon
STDIN_WINDOW = 1 << 20     # at most this much stdin not yet written into the task
RECV_SIZE = 1 << 16        # the session carries control frames only
STDIN_CHUNK = 64 * 1024
PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?$")

USAGE = """\
usage: mosrun [-b | -r NODE | -h] [-L] [-A SECONDS] [-m MB] [-q] [-J NAME] [--node ADDR] [--local N] COMMAND [ARGS...]

Run COMMAND on the best node of the mosix cluster, with this machine as its home: its output,
input, signals, files (for Python programs) and exit status stay here.

  -b          run on the best node (default)
  -r NODE     run on NODE (a node id such as n2, or HOST:PORT)
  -h          run here, on the home node
  -L          lock the task where it starts: the balancer never moves it (migrate still can)
  -A SECONDS  checkpoint the task to this node every SECONDS; if the node running it dies,
              it is restarted elsewhere from the latest checkpoint
  -m MB       the memory the task needs; only nodes with that much free are chosen
  -q          wait until a node can take the task instead of failing
  -J NAME     a name for the task (shown by mosps)
  --node ADDR the home daemon: a local node id, or the path of its mosrun.sock
  --local N   bring up an ephemeral N-node local cluster for this run if none is running
  --help      show this help
"""


class UsageError(Exception):
    """Bad command line; the message is shown with the usage hint."""


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """mosrun's own options up to COMMAND; everything from COMMAND on is the task's."""
    opts: dict[str, Any] = {"where": "best", "node": "", "memory_mb": 0, "queue": False, "job_name": "",
                            "home_node": None, "local": 0, "locked": False, "checkpoint_every": 0.0}
    i = 0
    with_value = {"-r", "-m", "-J", "-A", "--node", "--local"}
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "--":
            i += 1
            break
        if arg == "--help":
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        name, value = arg, None
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif arg[:2] in ("-r", "-m", "-J", "-A") and len(arg) > 2:
            name, value = arg[:2], arg[2:]
        if name in with_value and value is None:
            if i + 1 >= len(argv):
                raise UsageError(f"option {name} needs a value")
            value = argv[i + 1]
            i += 1
        if name == "-b":
            opts["where"] = "best"
        elif name == "-h":
            opts["where"] = "home"
        elif name == "-r":
            opts["where"], opts["node"] = "node", value
        elif name == "-q":
            opts["queue"] = True
        elif name == "-L":
            opts["locked"] = True
        elif name == "-A":
            try:
                opts["checkpoint_every"] = float(value or "")
            except ValueError:
                opts["checkpoint_every"] = 0.0
            if not opts["checkpoint_every"] > 0:
                raise UsageError(f"option -A takes a positive number of seconds, got {value!r}")
        elif name == "-J":
            opts["job_name"] = value
        elif name == "--node":
            opts["home_node"] = value
        elif name in ("-m", "--local"):
            if not (value or "").isdigit() or (name == "--local" and int(value or 0) < 1):
                raise UsageError(f"option {name} takes a positive whole number, got {value!r}")
            opts["memory_mb" if name == "-m" else "local"] = int(value or 0)
        else:
            raise UsageError(f"unknown option {arg}")
        i += 1
    command = argv[i:]
    if not command:
        raise UsageError("no COMMAND given")
    return opts, command


def split_python(args: list[str]) -> tuple[list[str], list[str]]:
    """Split a python command line into interpreter options and what runs (script/-c/-m + args)."""
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return options, args[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return options, args[i:]
        if arg.startswith("--"):
            if arg in ("--help", "--version"):
                raise UsageError(f"python {arg} is not a task; run it without mosrun")
            if arg == "--check-hash-based-pycs":
                options += args[i:i + 2]
                i += 2
                continue
            options.append(arg)
            i += 1
            continue
        for j, flag in enumerate(arg[1:], start=1):
            rest = arg[j + 1:]
            if flag in "cm":
                value = [rest] if rest else args[i + 1:i + 2]
                if not value:
                    raise UsageError(f"python option -{flag} needs an argument")
                if j > 1:
                    options.append(arg[:j])
                return options, [f"-{flag}", *value, *args[i + 1 + (0 if rest else 1):]]
            if flag in "WX":
                taken = [arg[:j + 1] + rest] if rest else [arg[:j + 1], *args[i + 1:i + 2]]
                options += taken
                i += 1 if rest else 2
                break
            if flag in "iV h":
                raise UsageError(f"python -{flag} is interactive or informational; run it without mosrun")
        else:
            options.append(arg)
            i += 1
    raise UsageError("interactive python is not supported; give a script, -c CODE or -m MODULE")


def which(command: str, path: str | None) -> str | None:
    """Like shutil.which, without importing shutil's dependencies."""
    if "/" in command:
        return os.path.abspath(command) if os.access(command, os.X_OK) and not os.path.isdir(command) else None
    for directory in (path or os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return None


def session_path(home_node: str | None) -> str:
    """The home daemon's session socket; raises LookupError with a one-line reason."""
    from mosrun.registry import find_local_node, read_registry

    home_node = home_node or os.environ.get("MOSIX_NODE") or None
    registry = read_registry()
    if home_node:
        if entry := find_local_node(home_node, registry):
            return entry["session"]
        if home_node.startswith("unix:"):
            home_node = home_node[5:]
        if "/" in home_node:
            return home_node if home_node.endswith("mosrun.sock") else os.path.join(os.path.dirname(home_node), "mosrun.sock")
        raise LookupError(f"{home_node!r} is not a daemon of this machine: mosrun runs from the task's home node "
                          "(give a local node id or the path of a mosrun.sock)")
    if os.path.exists(SYSTEM_SESSION):
        return SYSTEM_SESSION
    if registry and registry.get("nodes"):
        return registry["nodes"][0]["session"]
    raise LookupError("no mosixd found: no --node, no $MOSIX_NODE, no /run/mosix/mosrun.sock and no running "
                      "local cluster (start one with: mosixd --local 3, or use mosrun --local 3)")


def build_launch(opts: dict[str, Any], command: list[str]) -> dict[str, Any]:
    """The launch frame for the home daemon; raises SystemExit for errors python would report."""
    env = dict(os.environ)
    executable = which(command[0], env.get("PATH"))
    if executable is None:
        fail(f"{command[0]}: command not found", EXIT_NOT_FOUND)
    is_python = bool(PYTHON_NAME.match(os.path.basename(command[0]))
                     or PYTHON_NAME.match(os.path.basename(os.path.realpath(executable))))
    options: list[str] = []
    program: list[str] = []
    if is_python:
        options, program = split_python(command[1:])
        if program and program[0] not in ("-c", "-m"):
            script = program[0]
            try:
                with open(script, "rb"):
                    pass
            except OSError:
                # Let the interpreter itself say it cannot open the script: the message and the
                # exit status are then exactly python's (wrappers such as pyenv shims included).
                sys.stdout.flush()
                os.execv(executable, command)
        if program == ["-"] or program[:1] == ["-"]:
            raise UsageError("a python program read from stdin is not supported; give a script, -c or -m")
    umask = os.umask(0)
    os.umask(umask)
    return {"t": "launch", "argv": command, "executable": executable, "python": is_python,
            "python_options": options, "python_args": program, "env": env, "cwd": os.getcwd(),
            "umask": umask, "ttys": [os.isatty(0), os.isatty(1), os.isatty(2)], "where": opts["where"],
            "node": opts["node"], "memory_mb": opts["memory_mb"], "queue": opts["queue"],
            "job_name": opts["job_name"], "locked": opts["locked"], "checkpoint_every": opts["checkpoint_every"]}


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"mosrun: {message}\n")
    raise SystemExit(code)


class Session:
    """One task's session with the home daemon: the event loop on this side.

    The session socket carries the control: the launch, stdin, signals, notices and the exit
    status. The task's stdout, stderr and file requests come straight from the node running
    it, on the streams of :class:`mosrun.dataplane.DataPlane`, served in the same loop.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        self.plane: DataPlane | None = None
        self.session_open = True
        self.stdin_open = True
        self.stdin_in_flight = 0    # sent, not yet acknowledged as written into the task
        self.stdin_polled = False   # stdin cannot be watched (a regular file): read it when there is room
        self.status: int | None = None
        self.error = ""             # said once the task's last output is out
        wake_r, self.wake_w = socket.socketpair()
        wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.wake_r = wake_r

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.outbuf += frames.encode(header, payload)

    def run(self, launch: dict[str, Any]) -> int:
        hello = self._hello()
        try:
            self.plane = DataPlane(self.sel, str(hello.get("host", "")), str(hello.get("task", "")))
        except (OSError, UnicodeError, ValueError) as exc:
            fail(f"cannot listen for the task's output on {hello.get('host')!r}: "
                 f"{getattr(exc, 'strerror', None) or exc}", EXIT_LAUNCH)
        assert self.plane is not None
        self.sock.setblocking(False)
        self.send({**launch, "streams_to": self.plane.endpoint, "streams_token": self.plane.token.hex()})
        signal.set_wakeup_fd(self.wake_w.fileno())
        for sig in FORWARDED:
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the number
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        try:
            self.sel.register(0, selectors.EVENT_READ)
        except PermissionError:
            self.stdin_polled = True  # a regular file: epoll cannot watch it, it is always readable
        except (ValueError, OSError):
            self._eof_stdin()  # no usable stdin at all: the task sees an empty one
        while not (self.status is not None and self.plane.done()):
            self._update_interest()
            timeout = self.plane.timeout()
            if self.stdin_polled and self._room_for_stdin():
                timeout = 0
            for key, events in self.sel.select(timeout):
                if key.data is not None:
                    # A stream of the task, unless an earlier callback of this batch changed
                    # what it is for (or closed it): then the next select says it afresh.
                    now = self.sel.get_map().get(key.fd)
                    if now is not None and now.data is key.data:
                        key.data(events)
                elif key.fileobj is self.sock:
                    if events & selectors.EVENT_WRITE:
                        self._flush()
                    if events & selectors.EVENT_READ:
                        self._receive()
                elif key.fileobj is self.wake_r:
                    for signum in self.wake_r.recv(64):
                        self.send({"t": "signal", "sig": signum})
                elif key.fileobj == 0:
                    self._read_stdin()
            self.plane.tick()
            if self.stdin_polled and self._room_for_stdin():
                self._read_stdin()
        self.plane.close()
        if self.error:
            sys.stderr.write(f"mosrun: {self.error}\n")
        return self.status

    def _hello(self) -> dict[str, Any]:
        """The daemon's first frame: the task's id and the address to take its streams on."""
        try:
            frame = frames.recv_frame(self.sock)
        except (OSError, frames.ProtocolError):
            frame = None
        if frame is None:
            fail("the home daemon closed the session (was it stopped?)", EXIT_LOST)
        assert frame is not None
        header = frame[0]
        if header["t"] == "error":
            fail(str(header.get("message", "failed")), int(header.get("code", EXIT_LAUNCH)))
        if header["t"] != "hello":
            fail(f"the home daemon spoke out of turn ({header['t']!r})", EXIT_LAUNCH)
        return header

    def _room_for_stdin(self) -> bool:
        return self.stdin_open and len(self.outbuf) < OUT_HIGH_WATER and self.stdin_in_flight < STDIN_WINDOW

    def _update_interest(self) -> None:
        if self.session_open:
            self.sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0))
        if self.stdin_open and not self.stdin_polled:
            watching, room = 0 in self.sel.get_map(), self._room_for_stdin()
            if watching and not room:
                self.sel.unregister(0)
            elif room and not watching:
                self.sel.register(0, selectors.EVENT_READ)

    def _stop_stdin(self) -> None:
        self.stdin_open = False
        if 0 in self.sel.get_map():
            self.sel.unregister(0)

    def _eof_stdin(self) -> None:
        self._stop_stdin()
        self.send({"t": "stdin_eof"})

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, STDIN_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.send({"t": "stdin"}, data)
            self.stdin_in_flight += len(data)
            return
        self._eof_stdin()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            # The daemon stopped listening; its last frames may still be waiting to be read.
            self.outbuf.clear()
            self._stop_stdin()
            return
        del self.outbuf[:sent]

    def _receive(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            if self.status is not None:
                self.sel.unregister(self.sock)  # said all it had to; the task's output may still come
                self.session_open = False
                return
            fail("the home daemon closed the session (was it stopped?)", EXIT_LOST)
        self.inbuf += data
        start, prefix = 0, frames.PREFIX.size
        while len(self.inbuf) - start >= prefix and self.status is None:
            head_len, payload_len = frames.check_sizes(self.inbuf[start:start + prefix])
            end = start + prefix + head_len + payload_len
            if len(self.inbuf) < end:
                break
            self._handle(frames.decode_header(bytes(self.inbuf[start + prefix:start + prefix + head_len])))
            start = end
        del self.inbuf[:start]

    def _handle(self, header: dict[str, Any]) -> None:
        assert self.plane is not None
        kind = header["t"]
        if kind == "stdin_ack":
            self.stdin_in_flight -= int(header.get("n", 0))
        elif kind == "started":
            self.plane.start()
        elif kind == "epoch":
            self.plane.switch(int(header["epoch"]))  # the task moved on to a newer copy
        elif kind == "exit":
            sig = int(header.get("signal") or 0)
            self.status = 128 + sig if sig else int(header.get("code", 0))
            self.plane.finish()
        elif kind == "error":
            self.error = str(header.get("message", "failed"))
            self.status = int(header.get("code", EXIT_LAUNCH))
            self.plane.finish()
        elif kind == "notice":
            sys.stderr.write(f"mosrun: {header.get('text', '')}\n")
        elif kind == "queued":
            sys.stderr.write(f"mosrun: waiting for a node to take the task ({header.get('reason', '')})\n")


def _fill_std_fds() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr, so no socket opened later lands there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one


def main(argv: list[str] | None = None) -> int:
    _fill_std_fds()
    try:
        opts, command = parse_args(sys.argv[1:] if argv is None else argv)
        launch = build_launch(opts, command)
    except UsageError as exc:
        sys.stderr.write(f"mosrun: {exc}\n(see mosrun --help)\n")
        return EXIT_USAGE
    if opts["local"]:
        return _with_local_cluster(opts, launch)
    return _run(opts, launch)


def _run(opts: dict[str, Any], launch: dict[str, Any]) -> int:
    try:
        path = session_path(opts["home_node"])
    except LookupError as exc:
        fail(str(exc), EXIT_LAUNCH)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        fail(f"cannot reach the home daemon at {path}: {exc.strerror}", EXIT_LAUNCH)
    return Session(sock).run(launch)


def _with_local_cluster(opts: dict[str, Any], launch: dict[str, Any]) -> int:
    from mosrun.client import ClientError, ephemeral_cluster
    from mosrun.registry import read_registry

    if opts["home_node"] or os.environ.get("MOSIX_NODE") or read_registry() is not None:
        return _run(opts, launch)
    try:
        with ephemeral_cluster(opts["local"]):
            return _run(opts, launch)
    except ClientError as exc:
        fail(str(exc), EXIT_LAUNCH)
    return EXIT_LAUNCH


if __name__ == "__main__":
    sys.exit(main())
