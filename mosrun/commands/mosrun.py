"""``mosrun``: run a program on the best node of the cluster, with this machine as its home.

Standard library only and little of it, so that starting a task costs barely more than
starting Python. mosrun stays connected to its home daemon for the task's whole life: it
forwards stdin and signals through it, and exits with the task's status. The task's stdout,
stderr and file requests come to mosrun directly from the node running it
(``mosrun.commands.dataplane``): mosrun writes the output and performs the file operations of a Python
task here as this user (``mosrun.commands.homefs``).

Exit codes: the task's own code, or 128+N when it died of signal N; 2 usage (and, as with
python, a script that cannot be opened); 125 the task could not be started (no daemon, unknown
node, no node can take it); 127 command not found; 255 the node running the task was lost.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Any

from mosrun.commands.session import EXIT_LAUNCH, Session, fail

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127
SYSTEM_SESSION = "/run/mosix/mosrun.sock"
PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)*)?$")

USAGE = """\
usage: mosrun [-b | -r NODE | -h] [-L] [-A SECONDS] [-m MB] [-q] [--queue-timeout SECONDS] [-J NAME]
              [--node ADDR] [--local N] COMMAND [ARGS...]

Run COMMAND on the best node of the mosix cluster, with this machine as its home: its output,
input, signals, files (for Python programs) and exit status stay here.

  -b          run on the best node (default)
  -r NODE     run on NODE (a node id such as n2, or HOST:PORT)
  -h          run here, on the home node
  -L          lock the task where it starts: the balancer never moves it (migrate still can)
  -A SECONDS  checkpoint the task to this node every SECONDS; if the node running it dies,
              it is restarted elsewhere from the latest checkpoint
  -m MB       the memory the task needs; only nodes with that much free are chosen
  -q          wait until a node can take the task instead of failing (Ctrl-C leaves the queue)
  --queue-timeout SECONDS
              wait in the queue at most SECONDS (implies -q), then give up with exit code 125
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
                            "home_node": None, "local": 0, "locked": False, "checkpoint_every": 0.0,
                            "queue_timeout": 0.0}
    i = 0
    with_value = {"-r", "-m", "-J", "-A", "--node", "--local", "--queue-timeout"}
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
        elif name in ("-A", "--queue-timeout"):
            key = "checkpoint_every" if name == "-A" else "queue_timeout"
            try:
                opts[key] = float(value or "")
            except ValueError:
                opts[key] = 0.0
            if not opts[key] > 0:
                raise UsageError(f"option {name} takes a positive number of seconds, got {value!r}")
            opts["queue"] = opts["queue"] or name == "--queue-timeout"
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
    from mosixd.settings.registry import find_local_node, present, read_registry

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
    if present(SYSTEM_SESSION):
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
            "queue_timeout": opts["queue_timeout"],
            "job_name": opts["job_name"], "locked": opts["locked"], "checkpoint_every": opts["checkpoint_every"]}


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
    return Session(sock, path).run(launch)


def _with_local_cluster(opts: dict[str, Any], launch: dict[str, Any]) -> int:
    from mosrun.commands.client import ClientError, ephemeral_cluster, local_registry

    try:
        if opts["home_node"] or os.environ.get("MOSIX_NODE") or local_registry() is not None:
            return _run(opts, launch)
        with ephemeral_cluster(opts["local"]):
            return _run(opts, launch)
    except ClientError as exc:
        fail(str(exc), EXIT_LAUNCH)
    return EXIT_LAUNCH


if __name__ == "__main__":
    sys.exit(main())
