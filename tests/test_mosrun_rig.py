"""mosrun on the multi-process rig: programs run on another node, the home keeps their I/O."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import BIN, LocalRig, gone, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]


def test_non_python_program_keeps_output_status_and_stdin(shared_rig3: LocalRig, tmp_path: Path) -> None:
    out = shared_rig3.mosrun("-r", "n2", "sh", "-c", 'echo "on $MOSIX_NODE"; echo oops >&2; exit 7', cwd=tmp_path)
    assert (out.stdout, out.stderr, out.returncode) == (b"on n2\n", b"oops\n", 7)
    data = os.urandom(3 << 20)
    out = shared_rig3.mosrun("-r", "n3", "cat", input=data)
    assert out.returncode == 0 and out.stdout == data
    out = shared_rig3.mosrun("-r", "n2", "sh", "-c", "kill -USR1 $$")
    assert out.returncode == 128 + signal.SIGUSR1


def test_output_is_a_pipe_as_in_a_local_run(shared_rig3: LocalRig, tmp_path: Path) -> None:
    """Shell scripts write to /dev/stdout and /dev/stderr; programs test what their output is."""
    script = 'echo to-out > /dev/stdout; echo to-err > /dev/stderr; [ -p /dev/stdout ] && echo pipe; exit 4'
    local = subprocess.run(["sh", "-c", script], capture_output=True, timeout=30)
    out = shared_rig3.mosrun("-r", "n2", "sh", "-c", script, cwd=tmp_path)
    assert (out.stdout, out.stderr, out.returncode) == (local.stdout, local.stderr, local.returncode)
    assert out.stdout == b"to-out\npipe\n"


def test_stdin_from_a_file_or_closed(shared_rig3: LocalRig, tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"from a regular file\n" * 1000)
    with data.open("rb") as stdin:
        out = subprocess.run([str(BIN / "mosrun"), "-r", "n2", "cat"], stdin=stdin, capture_output=True,
                             env=shared_rig3.env, timeout=30)
    assert (out.returncode, out.stdout) == (0, data.read_bytes())
    # A closed stdin reads as empty, as it would for a local program given /dev/null.
    out = subprocess.run(["sh", "-c", f"exec {BIN / 'mosrun'} -r n2 sh -c 'cat; echo end' <&-"],
                         capture_output=True, env=shared_rig3.env, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"end\n", b"")


def test_working_directory_umask_and_environment_travel(shared_rig3: LocalRig, tmp_path: Path) -> None:
    env_probe = 'echo "$PWD $(umask) $MOSIX_PROBE"'
    proc = subprocess.run([str(BIN / "mosrun"), "-r", "n3", "sh", "-c", f"umask 027 && {env_probe}"],
                          capture_output=True, cwd=tmp_path, env=dict(shared_rig3.env, MOSIX_PROBE="xyz"), timeout=30)
    assert proc.stdout.decode().split() == [str(tmp_path), "0027", "xyz"]
    proc = subprocess.run(["sh", "-c", f"umask 077 && exec {BIN / 'mosrun'} -r n2 sh -c 'umask'"],
                          capture_output=True, env=shared_rig3.env, timeout=30)
    assert proc.stdout == b"0077\n"


def test_user_errors_are_one_line_with_documented_codes(shared_rig3: LocalRig, tmp_path: Path) -> None:
    out = shared_rig3.mosrun("-r", "n7", "true")
    assert out.returncode == 125
    assert out.stderr == b"mosrun: unknown node 'n7' (known: n1, n2, n3)\n"
    out = shared_rig3.mosrun("no-such-program-here")
    assert (out.returncode, out.stderr) == (127, b"mosrun: no-such-program-here: command not found\n")
    out = shared_rig3.mosrun("-m", "100000000", "true")
    assert out.returncode == 125
    assert out.stderr.startswith(b"mosrun: no node can take the task (") and b"not enough memory" in out.stderr
    assert out.stderr.count(b"\n") == 1
    out = shared_rig3.mosrun("-x", "true")
    assert out.returncode == 2 and out.stderr.startswith(b"mosrun: unknown option -x\n")
    out = shared_rig3.mosrun()
    assert out.returncode == 2


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, MOSIX_RUNTIME_DIR=str(tmp_path))
    env.pop("MOSIX_NODE", None)
    out = subprocess.run([str(BIN / "mosrun"), "true"], capture_output=True, env=env, timeout=30)
    if Path("/run/mosix/mosrun.sock").exists():
        pytest.skip("a system mosixd runs on this machine")
    assert out.returncode == 125 and out.stderr.startswith(b"mosrun: no mosixd found")


def test_queue_waits_for_a_node_to_accept(shared_rig3: LocalRig) -> None:
    for node in ("n1", "n2", "n3"):
        assert shared_rig3.tool("mosctl", "--node", node, "block").returncode == 0
    try:
        wait_for(lambda: shared_rig3.converged(expect={"n1": "blocked", "n2": "blocked", "n3": "blocked"}), 10)
        out = shared_rig3.mosrun("true")
        assert out.returncode == 125 and b"blocked" in out.stderr
        waiting = subprocess.Popen([str(BIN / "mosrun"), "-q", "sh", "-c", "echo ran on $MOSIX_NODE"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared_rig3.env)
        wait_for(lambda: any(t["state"] == "queued" for t in shared_rig3.tasks()), 10)
        assert shared_rig3.tool("mosctl", "--node", "n2", "noblock").returncode == 0
        stdout, stderr = waiting.communicate(timeout=30)
        assert waiting.returncode == 0 and stdout == b"ran on n2\n"
        assert b"waiting for a node" in stderr
    finally:
        for node in ("n1", "n2", "n3"):
            shared_rig3.tool("mosctl", "--node", node, "noblock")
        wait_for(shared_rig3.converged, 10)


def test_mosps_shows_where_each_task_runs(shared_rig3: LocalRig) -> None:
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n3", "-J", "probe", "sleep", "30"], env=shared_rig3.env)
    try:
        task = wait_for(lambda: next((t for t in shared_rig3.tasks("n1")
                                      if t["command"] == "sleep 30" and t["state"] == "running"), None), 10)
        assert (task["home"], task["where"], task["state"]) == ("n1", "n3", "running")
        assert set(task) >= {"id", "user", "home", "where", "state", "started", "cpu", "rss", "command"}
        hosted = wait_for(lambda: [t for t in shared_rig3.tasks("n3") if t["id"] == task["id"]], 10)
        assert hosted[0]["where"] == "n3" and psutil.Process(hosted[0]["pid"]).cmdline()[:2] == ["sleep", "30"]
        wait_for(lambda: next(t for t in shared_rig3.tasks("n1") if t["id"] == task["id"])["rss"] > 0, 10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 128 + signal.SIGINT
    wait_for(lambda: not shared_rig3.tasks("n1") and not shared_rig3.tasks("n3"), 10)


def test_killing_mosrun_ends_the_remote_task(shared_rig3: LocalRig) -> None:
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", "sleep", "60"], env=shared_rig3.env)
    hosted = wait_for(lambda: [t for t in shared_rig3.tasks("n2") if t["command"] == "sleep 60"], 10)
    pid = hosted[0]["pid"]
    proc.kill()
    proc.wait()
    wait_for(lambda: gone(pid), 10)
    wait_for(lambda: not shared_rig3.tasks("n2"), 10)


def test_fifty_concurrent_mosruns_all_complete(shared_rig3: LocalRig) -> None:
    def one(i: int) -> tuple[int, bytes, bytes]:
        out = shared_rig3.mosrun("sh", "-c", f"echo task {i}; head -c {1000 * i} /dev/zero | wc -c; exit {i % 7}",
                                 timeout=120)
        return out.returncode, out.stdout, out.stderr

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    for i, (code, stdout, stderr) in enumerate(results):
        assert (code, stdout.split(), stderr) == (i % 7, [b"task", str(i).encode(), str(1000 * i).encode()], b"")


def test_a_node_that_dies_under_its_task_is_reported(tmp_path: Path) -> None:
    rig = start_rig(2, tmp_path)
    try:
        wait_for(rig.converged, 30)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", "sh", "-c", "echo started; sleep 60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
        os.kill(rig.node("n2")["pid"], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 255
        assert stderr.decode().startswith("mosrun: node n2 running task n1.")
        assert stderr.count(b"\n") == 1
    finally:
        rig.stop()


def test_eight_launches_at_once_spread_four_and_four(tmp_path: Path) -> None:
    rig = start_rig(2, tmp_path, "--cpus", "1")
    try:
        wait_for(rig.converged, 30)
        busy = "end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done; echo $MOSIX_NODE"
        with ThreadPoolExecutor(max_workers=8) as pool:
            outs = list(pool.map(lambda _: rig.mosrun("sh", "-c", busy, timeout=120), range(8)))
        nodes = sorted(o.stdout.decode().strip() for o in outs)
        assert all(o.returncode == 0 for o in outs)
        placed = [line for line in rig.log.read_text().splitlines() if "started" in line or "refus" in line]
        assert nodes == ["n1"] * 4 + ["n2"] * 4, "\n".join(placed)
    finally:
        rig.stop()


def test_readme_main_command_runs_the_example_on_an_ephemeral_cluster(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "pi.py"
    env = dict(os.environ, MOSIX_RUNTIME_DIR=str(tmp_path / "rt"))
    env.pop("MOSIX_NODE", None)
    out = subprocess.run([str(BIN / "mosrun"), "--local", "3", sys.executable, str(example), "--samples", "40000"],
                         capture_output=True, env=env, cwd=tmp_path, timeout=90)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("pi ~ 3.1")
    assert lines[-1].endswith(("(computed on n1)", "(computed on n2)", "(computed on n3)"))
    assert json.loads((tmp_path / "out" / "pi.json").read_text())["samples"] == 40000
    assert not (tmp_path / "rt" / "local.json").exists(), "the ephemeral cluster is gone afterwards"


# ---- the direct streams, against a stand-in home daemon -------------------------------------
# mosrun talks to a fake home daemon on a Unix socket, and the test opens the task's streams
# itself, as a node would: what mosrun accepts, refuses and shows can then be driven exactly.


class FakeHome:
    """A home daemon's session socket, speaking just enough of the protocol to run mosrun."""

    def __init__(self, tmp_path: Path, stdout: Any = subprocess.PIPE) -> None:
        from mosrun.runtime import frames

        self.frames = frames
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(tmp_path / "mosrun.sock"))
        self.server.listen(1)
        self.server.settimeout(20)
        env = dict(os.environ)
        env.pop("MOSIX_NODE", None)
        self.proc = subprocess.Popen([str(BIN / "mosrun"), "--node", str(tmp_path / "mosrun.sock"), "true"],
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, env=env)
        self.session, _ = self.server.accept()
        self.session.settimeout(20)
        frames.send_frame(self.session, {"t": "hello", "task": "n1.1.1", "host": "127.0.0.1"})
        launch = frames.recv_frame(self.session)
        assert launch is not None and launch[0]["t"] == "launch"
        host, _, port = launch[0]["streams_to"].rpartition(":")
        assert host == "127.0.0.1"
        self.address = (host, int(port))
        self.token = bytes.fromhex(launch[0]["streams_token"])

    def say(self, header: dict[str, Any]) -> None:
        self.frames.send_frame(self.session, header)

    def connect(self, kind: str, epoch: int = 0, token: bytes | None = None) -> tuple[socket.socket, bytes]:
        """Open one stream as a node would; returns it and mosrun's answer (b"" if refused)."""
        from mosrun.runtime.frames import greeting

        sock = socket.create_connection(self.address, timeout=20)
        sock.sendall(greeting("n1.1.1", epoch, kind, self.token if token is None else token))
        try:
            return sock, sock.recv(1)
        except ConnectionResetError:
            return sock, b""

    def finish(self, code: int = 0) -> tuple[bytes, bytes]:
        self.say({"t": "exit", "code": code, "signal": 0})
        try:
            stdout, stderr = self.proc.communicate(timeout=30)
        finally:
            self.session.close()
            self.server.close()
        assert self.proc.returncode == code, stderr
        return stdout, stderr


def test_streams_with_a_wrong_token_or_garbage_are_refused(tmp_path: Path) -> None:
    home = FakeHome(tmp_path)
    garbage = socket.create_connection(home.address, timeout=20)
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
    try:
        assert garbage.recv(1) == b"", "closed without an answer"
    except ConnectionResetError:
        pass  # closed with our bytes unread: a reset
    wrong, answer = home.connect("stdout", token=bytes(32))
    assert answer == b""
    stale, answer = home.connect("stdout", token=home.token[:-1] + bytes([home.token[-1] ^ 1]))
    assert answer == b""
    out, answer = home.connect("stdout")
    assert answer == b"+"
    home.say({"t": "started", "task": "n1.1.1", "node": "n2", "pid": 1})
    out.sendall(b"still fine\n")
    out.close()
    stdout, stderr = home.finish(3)
    assert stdout == b"still fine\n"
    # Said on stderr, at most once per few seconds however many come.
    assert stderr.count(b"mosrun: refused a connection from 127.0.0.1:") == 1, stderr
    for sock in (garbage, wrong, stale):
        sock.close()


def test_only_the_current_copy_is_shown_and_a_called_off_copy_is_discarded(tmp_path: Path) -> None:
    home = FakeHome(tmp_path)
    first = {kind: home.connect(kind, 0)[0] for kind in ("stdout", "stderr")}
    home.say({"t": "started", "task": "n1.1.1", "node": "n2", "pid": 1})
    first["stdout"].sendall(b"A\n")
    first["stderr"].sendall(b"a\n")
    # A move that was called off: its copy connected, printed (after its replay), and ended.
    ghost = home.connect("stdout", 1)[0]
    ghost.sendall(b"GHOST\n")
    ghost.close()
    quiet = home.connect("stderr", 1)[0]
    quiet.close()
    # The move that succeeds: its copy runs, and prints, before the old copy has ended.
    second = {kind: home.connect(kind, 2)[0] for kind in ("stdout", "stderr")}
    second["stdout"].sendall(b"C\n")
    home.say({"t": "epoch", "epoch": 2})
    first["stdout"].sendall(b"B\n")  # the old copy's last words still come first
    first["stderr"].sendall(b"b\n")
    for sock in first.values():
        sock.close()
    late, answer = home.connect("stdout", 1)
    assert answer == b"", "a copy older than the current one is turned away"
    second["stdout"].sendall(b"D\n")
    second["stderr"].sendall(b"d\n")
    for sock in second.values():
        sock.close()
    stdout, stderr = home.finish(0)
    assert (stdout, stderr) == (b"A\nB\nC\nD\n", b"a\nb\nd\n")
    late.close()


def test_a_slow_reader_holds_the_task_back_without_buffering(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    home = FakeHome(tmp_path, stdout=write_end)
    os.close(write_end)
    out = home.connect("stdout")[0]
    home.say({"t": "started", "task": "n1.1.1", "node": "n2", "pid": 1})
    out.setblocking(False)
    block, offered, taken, stalls = bytes(1 << 20), 256 << 20, 0, 0
    # Nobody reads mosrun's stdout: what the stream takes must stop at the buffers on the way.
    for _ in range(5000):
        try:
            taken += out.send(block[:min(len(block), offered - taken)])
            stalls = 0
        except BlockingIOError:
            stalls += 1
            if stalls >= 20:
                break
            select.select([], [out], [], 0.05)
        if taken == offered:
            break
    assert taken < 64 << 20, f"{taken >> 20} MiB taken with nobody reading"
    assert psutil.Process(home.proc.pid).memory_info().rss < 100 << 20
    # Once the terminal reads again everything arrives.
    received = 0
    out.setblocking(True)

    def drain() -> None:
        nonlocal received
        while chunk := os.read(read_end, 1 << 20):
            received += len(chunk)

    with ThreadPoolExecutor(max_workers=1) as pool:
        reader = pool.submit(drain)
        out.sendall(block * ((offered - taken) >> 20) + block[:(offered - taken) % len(block)])
        out.close()
        home.finish(0)
        reader.result(timeout=60)
    os.close(read_end)
    assert received == offered


def test_an_orphan_holding_the_output_open_does_not_hang_mosrun(shared_rig3: LocalRig) -> None:
    # The shell ends at once; the sleep it leaves behind keeps the task's stdout open.
    out = shared_rig3.mosrun("-r", "n2", "sh", "-c", "sleep 40 & echo done; exit 4", timeout=30)
    assert (out.returncode, out.stdout) == (4, b"done\n")


def test_big_output_reaches_a_slow_reader_whole(shared_rig3: LocalRig) -> None:
    script = "import sys\nblock = bytes(range(256)) * 4096\nfor _ in range(200): sys.stdout.buffer.write(block)\n"
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", sys.executable, "-c", script],
                            stdout=subprocess.PIPE, env=shared_rig3.env)
    assert proc.stdout is not None
    first = proc.stdout.read(1 << 20)
    host = shared_rig3.node("n2")["pid"]
    # With the reader paused, neither mosrun nor the node's daemon takes in the 200 MiB.
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_SLEEPING, 10)
    assert psutil.Process(proc.pid).memory_info().rss < 100 << 20
    assert psutil.Process(host).memory_info().rss < 400 << 20
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert first + rest == (bytes(range(256)) * 4096) * 200
