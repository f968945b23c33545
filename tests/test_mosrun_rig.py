"""mosrun on the multi-process rig: programs run on another node, the home keeps their I/O."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
        task = wait_for(lambda: next((t for t in shared_rig3.tasks("n1") if t["command"] == "sleep 30"), None), 10)
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
        assert nodes == ["n1"] * 4 + ["n2"] * 4
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
