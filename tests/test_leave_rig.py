"""A node that leaves takes no task with it: on SIGTERM it moves its guests away first.

On the multi-process rig, one node's daemon gets SIGTERM (what ``systemctl stop`` and
``docker stop`` send) while it runs a task for another node's user.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import BIN, LocalRig, counter, done_line, gone, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]

PY = sys.executable



def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def start(rig: LocalRig, cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "mosrun"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=rig.env)


def running_on(rig: LocalRig, node: str) -> dict:
    return wait_for(lambda: next((t for t in rig.tasks("n1") if t["state"] == "running"
                                  and t["where"] == node), None), 15)


def stop_node(rig: LocalRig, node: str) -> int:
    pid = rig.node(node)["pid"]
    os.kill(pid, signal.SIGTERM)
    return pid


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[LocalRig]:
    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        yield rig
    finally:
        rig.stop()


def test_a_resumable_task_whose_node_stops_finishes_elsewhere_with_a_local_runs_output(
        rig: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", counter(80))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = start(rig, tmp_path, "-r", "n2", PY, "job.py")
    task = running_on(rig, "n2")
    time.sleep(0.5)
    pid = stop_node(rig, "n2")
    # It moved, and the node then stopped on its own, well within the leave timeout.
    wait_for(lambda: next((t["where"] for t in rig.tasks("n1") if t["id"] == task["id"]), "n2") in ("n1", "n3"), 20)
    wait_for(lambda: gone(pid), 20)
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)
    assert "moved to" in rig.log.read_text()
    # The peers were told: n2 left, and nobody had to suspect it.
    assert rig.view("n1")["n2"] == "left"
    assert "is suspect" not in rig.log.read_text()


def test_a_task_that_cannot_move_ends_with_a_line_that_says_why(rig: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "plain.py", """
        import time
        print("working", flush=True)
        time.sleep(60)
    """)
    proc = start(rig, tmp_path, "-r", "n2", PY, "plain.py")
    task = running_on(rig, "n2")
    assert proc.stdout is not None and proc.stdout.readline() == b"working\n"
    stop_node(rig, "n2")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 255 and stdout == b""
    assert stderr.decode() == (f"mosrun: node n2 left the cluster; task {task['id']} ended there: it could not "
                               "move: it has no safe points (a Python task must call mosrun.resumable())\n")


def test_a_checkpointed_task_that_cannot_move_in_time_restarts_from_its_checkpoint(tmp_path: Path) -> None:
    rig = start_rig(3, tmp_path / "rig", "--no-balance", "--leave-timeout", "0")
    try:
        wait_for(rig.converged, 30)
        write(tmp_path / "job.py", counter(60))
        proc = start(rig, tmp_path, "-A", "0.5", "-r", "n2", PY, "job.py")
        task = running_on(rig, "n2")
        checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
        wait_for(lambda: any(checkpoints.glob(f"{task['id']}.*.ckpt")), 20)
        stop_node(rig, "n2")
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert stdout.decode().splitlines()[-1] == done_line(60)
        assert f"mosrun: node n2 running task {task['id']} left the cluster; restarted on n" in stderr.decode()
    finally:
        rig.stop()


def test_a_leaving_node_takes_no_new_task(rig: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", counter(200))
    proc = start(rig, tmp_path, "-r", "n2", PY, "job.py")
    running_on(rig, "n2")
    stop_node(rig, "n2")
    refused = rig.mosrun("-r", "n2", PY, "-c", "pass", cwd=tmp_path)
    assert refused.returncode == 125
    # Refused by n2 itself, or by n1, which was told that n2 leaves.
    assert refused.stderr.decode() in ("mosrun: no node can take the task (n2: left)\n",
                                       "mosrun: no node can take the task (n2: it is leaving the cluster)\n")
    proc.kill()
    proc.wait()
