"""``mosrun -q``: a queue that listens. Ctrl-C, SIGTERM or SIGHUP takes a task out of it, a time
limit ends the wait, ``mosps`` shows each queued task's place, and a home forgets them all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import BIN, LocalRig, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]


@pytest.fixture(scope="module")
def blocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRig]:
    """Two nodes, both blocked: every launch waits in n1's queue."""
    rig = start_rig(2, tmp_path_factory.mktemp("queue"), "--no-balance")
    try:
        wait_for(rig.converged, 30)
        for node in ("n1", "n2"):
            assert rig.tool("mosctl", "--node", node, "block").returncode == 0
        wait_for(lambda: rig.converged(expect={"n1": "blocked", "n2": "blocked"}), 15)
        yield rig
    finally:
        rig.stop()


def queued(rig: LocalRig, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(BIN / "mosrun"), "-q", *args, "sh", "-c", "echo ran"], env=rig.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # said once the task is in the queue
    assert line.startswith(b"mosrun: waiting for a node to take the task, place "), line
    return proc


def queue(rig: LocalRig) -> list[tuple[str, int]]:
    return [(t["id"], t.get("queue", 0)) for t in rig.tasks("n1")]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_takes_the_task_out_of_the_queue(blocked: LocalRig, signum: int, code: int) -> None:
    proc = queued(blocked)
    wait_for(lambda: len(queue(blocked)) == 1, 10)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=10)
    assert (proc.returncode, stdout) == (code, b"")
    assert stderr.decode() == f"mosrun: left the queue ({signal.Signals(signum).name})\n"
    wait_for(lambda: queue(blocked) == [], 10)


def test_a_time_limit_ends_the_wait_with_one_line(blocked: LocalRig) -> None:
    started = time.monotonic()
    proc = queued(blocked, "--queue-timeout", "2")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 125 and stdout == b"" and time.monotonic() - started >= 2
    assert stderr.decode().startswith("mosrun: gave up after 2 s in the queue (no node can take the task: n1: ")
    assert len(stderr.decode().splitlines()) == 1


def test_mosps_shows_each_queued_tasks_place_and_a_mosrun_that_left_is_forgotten(blocked: LocalRig) -> None:
    procs = [queued(blocked) for _ in range(3)]
    try:
        wait_for(lambda: [place for _, place in queue(blocked)] == [1, 2, 3], 10)
        ids = [task_id for task_id, _ in queue(blocked)]
        procs[1].kill()  # mosrun dies without a word: its task leaves the queue all the same
        procs[1].wait()
        wait_for(lambda: queue(blocked) == [(ids[0], 1), (ids[2], 2)], 10)
        listing = blocked.tool("mosps", "--node", "n1")
        assert "queued:1" in listing.stdout and "queued:2" in listing.stdout
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    wait_for(lambda: queue(blocked) == [], 10)
    tables = json.loads(blocked.tool("mosctl", "--node", "n1", "status", "--json").stdout)["tables"]
    assert tables["sessions"] == tables["task_records"] == 0


def test_queued_tasks_start_in_order_when_a_node_frees_up(blocked: LocalRig) -> None:
    procs = [queued(blocked) for _ in range(3)]
    try:
        wait_for(lambda: len(queue(blocked)) == 3, 10)
        order = [task_id for task_id, _ in sorted(queue(blocked), key=lambda item: item[1])]
        assert blocked.tool("mosctl", "--node", "n2", "noblock").returncode == 0
        for proc in procs:
            stdout, _ = proc.communicate(timeout=30)
            assert (proc.returncode, stdout) == (0, b"ran\n")
        said = (re.search(r" task (\S+) of n1 started: pid ", line) for line in blocked.log.read_text().splitlines())
        started = [m.group(1) for m in said if m and m.group(1) in order]
        assert started == order
    finally:
        assert blocked.tool("mosctl", "--node", "n2", "block").returncode == 0
        wait_for(lambda: blocked.converged(expect={"n1": "blocked", "n2": "blocked"}), 15)


def test_a_checkpoint_bigger_than_the_home_keeps_is_refused_and_the_user_told_once(tmp_path: Path) -> None:
    from conftest import counter, done_line

    rig = start_rig(2, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        n1 = rig.node("n1")
        with open(n1["config"], "a") as config:
            config.write("[limits]\ncheckpoint_mb = 1\n")
        os.kill(n1["pid"], signal.SIGKILL)
        rig.start_node("n1")
        wait_for(rig.converged, 30)
        (tmp_path / "job.py").write_text(counter(40, pause=0.05, ballast=4 << 20))
        ran = rig.mosrun("-A", "0.3", "-r", "n2", sys.executable, "job.py", cwd=tmp_path, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.decode().splitlines()[-1] == done_line(40, 4 << 20)  # the task ran on
        notices = [line for line in ran.stderr.decode().splitlines() if "could not be kept" in line]
        assert len(notices) == 1, ran.stderr
        assert "over 1 MiB (limits.checkpoint_mb)" in notices[0] and "cannot be restarted" in notices[0]
        assert not list((Path(n1["state_dir"]) / "checkpoints").glob("*.ckpt"))
    finally:
        rig.stop()
