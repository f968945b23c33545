"""A home daemon that dies while its tasks run elsewhere: the tasks and their mosruns wait for it
(``limits.home_restart``), and the daemon started again takes them back from its state
directory. A mosrun that died meanwhile (its machine rebooted) does not come back: the task is
ended after that time, and mosps says it was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, LocalRig, counter, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow, pytest.mark.timeout(600)]

PY = sys.executable


def _restart_home(rig: LocalRig, pause: float = 1.0, extra: str = "") -> None:
    """kill -9 the home daemon n1, wait, and start it again by hand, as an administrator would."""
    n1 = rig.node("n1")
    if extra:
        with open(n1["config"], "a") as config:
            config.write(extra)
    os.kill(n1["pid"], signal.SIGKILL)
    time.sleep(pause)
    rig.start_node("n1")


def _tasks(rig: LocalRig, node: str = "n1") -> list[dict]:
    """mosps of ``node``; none while its daemon is not up yet."""
    out = rig.tool("mosps", "--json", "--node", node)
    return json.loads(out.stdout)["tasks"] if out.returncode == 0 else []


def _mosrun_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith("mosrun:")]


def test_a_task_outlives_its_home_daemons_restart_and_ends_as_a_local_run(tmp_path: Path) -> None:
    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        (tmp_path / "job.py").write_text(counter(120, pause=0.05))
        local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", PY, "job.py"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        wait_for(lambda: any(t["state"] == "running" for t in rig.tasks("n1")), 30)
        time.sleep(1.0)
        _restart_home(rig)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout == local.stdout  # nothing lost, nothing twice
        said = _mosrun_lines(stderr)
        assert len(said) == 2 and "home daemon went away" in said[0] and "is back" in said[1], stderr
        assert [line for line in stderr.decode().splitlines() if not line.startswith("mosrun:")] == []
        log = rig.log.read_text()
        assert "taken back: it runs on n2" in log
        wait_for(lambda: not _tasks(rig, "n1") and not _tasks(rig, "n2"), 20)
    finally:
        rig.stop()


def test_stdin_and_a_move_after_the_home_came_back(tmp_path: Path) -> None:
    """stdin keeps flowing across the restart (bytes in flight are resent), and the task taken
    back moves like any other."""
    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        (tmp_path / "job.py").write_text(
            "import sys, zlib\nfrom mosrun import resumable, safepoint\n"
            "s = resumable(n=0, crc=0)\n"
            "for line in sys.stdin:\n    s.n += 1\n    s.crc = zlib.crc32(line.encode(), s.crc)\n"
            "    if s.n % 50 == 0:\n        safepoint()\n"
            "print(s.n, s.crc)\n")
        payload = b"".join(b"%d\n" % i for i in range(300_000))
        local = subprocess.run([PY, "job.py"], cwd=tmp_path, input=payload, capture_output=True, timeout=60)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", PY, "job.py"], cwd=tmp_path, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        done = threading.Event()

        def feed() -> None:  # a trickle until the restart and the move are done, then the rest
            assert proc.stdin is not None
            with proc.stdin:
                at = 0
                while at < len(payload) and not done.is_set():
                    proc.stdin.write(payload[at:at + 4096])
                    proc.stdin.flush()
                    at += 4096
                    time.sleep(0.02)
                proc.stdin.write(payload[at:])

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            task = wait_for(lambda: next((t for t in rig.tasks("n1") if t["state"] == "running"), None), 30)
            time.sleep(0.5)
            _restart_home(rig)
            wait_for(lambda: next((t for t in _tasks(rig) if t["state"] == "running"), None), 30)
            wait_for(rig.converged, 30)
            moved = rig.tool("migrate", "--json", "--node", "n1", task["id"], "n3", timeout=120)
            assert moved.returncode == 0 and json.loads(moved.stdout)["ok"], moved.stdout + moved.stderr
        finally:
            done.set()
            feeder.join(timeout=120)
        proc.stdin = None
        stdout, stderr = proc.communicate(timeout=120)
        assert (proc.returncode, stdout) == (0, local.stdout), stderr
    finally:
        rig.stop()


def test_a_home_that_comes_back_without_its_mosrun_ends_the_task_and_says_so(tmp_path: Path) -> None:
    """The home machine rebooted: mosrun is gone with it. The new daemon waits home_restart
    seconds for it, then ends the task on its node; mosps shows it as lost."""
    rig = start_rig(2, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        (tmp_path / "job.py").write_text(counter(2000, pause=0.05))
        proc = subprocess.Popen([str(BIN / "mosrun"), "-A", "0.3", "-r", "n2", PY, "job.py"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=rig.env)
        task = wait_for(lambda: next((t for t in rig.tasks("n1") if t["state"] == "running"), None), 30)
        checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
        wait_for(lambda: list(checkpoints.glob("*.ckpt")), 20)
        proc.kill()  # the machine goes down: mosrun and the daemon together
        _restart_home(rig, pause=0.0, extra="[limits]\nhome_restart = 3\n")
        proc.wait(timeout=30)
        wait_for(lambda: any(t["id"] == task["id"] and t["state"] == "returning" for t in _tasks(rig)), 30)
        wait_for(lambda: any(t["id"] == task["id"] and t["state"] == "lost" for t in _tasks(rig)), 30)
        wait_for(lambda: not [t for t in rig.tasks("n2") if t["id"] == task["id"]], 30)
        assert f"task {task['id']} of root: its mosrun did not come back within 3 s" in rig.log.read_text()
        assert not list(checkpoints.glob("*.ckpt"))
    finally:
        rig.stop()


def test_after_the_home_came_back_a_failover_still_prints_each_line_once(tmp_path: Path) -> None:
    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        (tmp_path / "job.py").write_text(counter(300, pause=0.05))
        local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-A", "3", "-r", "n2", PY, "job.py"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        task = wait_for(lambda: next((t for t in _tasks(rig) if t["state"] == "running"), None), 30)
        checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
        wait_for(lambda: list(checkpoints.glob(f"{task['id']}.*.ckpt")), 20)
        _restart_home(rig)
        wait_for(lambda: next((t for t in _tasks(rig) if t["state"] == "running"), None), 30)
        wait_for(lambda: _tasks(rig, "n3") is not None and rig.view("n1") == {"n1": "up", "n2": "up", "n3": "up"},
                 30, 0.1)
        # Killed before this life stores a checkpoint of its own: the restart is from one the
        # earlier life stored, and prints again what followed it.
        time.sleep(1.0)
        os.kill(rig.node("n2")["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout == local.stdout
        assert any("was lost; restarted on" in line for line in _mosrun_lines(stderr)), stderr
    finally:
        rig.stop()
