"""The cluster core on the multi-process rig: real mosixd processes on 127.0.1.x."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import BIN, LocalRig, free_port, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]

DOWN_LIMIT = 5.0  # default down_after at a 1 s gossip interval


def test_every_node_sees_three_up_with_real_figures(rig3: LocalRig) -> None:
    for node_id in ("n1", "n2", "n3"):
        snap = json.loads(rig3.tool("mosmon", "--json", "--node", node_id).stdout)
        nodes = {n["id"]: n for n in snap["nodes"]}
        assert set(nodes) == {"n1", "n2", "n3"}
        for n in nodes.values():
            assert n["state"] == "up"
            assert set(n) >= {"id", "address", "state", "load", "cpus", "speed", "mem_total", "mem_free",
                              "tasks", "age"}
            assert n["address"] == f"127.0.1.{n['id'][1:]}:{rig3.port}"
            assert n["cpus"] >= 1 and n["speed"] > 0
            assert 0 < n["mem_free"] <= n["mem_total"] == psutil.virtual_memory().total
            assert 0 <= n["age"] < DOWN_LIMIT


def test_kill_9_is_seen_down_within_the_limit_and_restart_comes_back_up(rig3: LocalRig) -> None:
    victim = rig3.node("n2")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: rig3.converged(["n1", "n3"], {"n2": "down", "n1": "up", "n3": "up"}), DOWN_LIMIT + 1.5, 0.1)
    assert time.monotonic() - killed_at <= DOWN_LIMIT + 1.5
    rig3.start_node("n2")
    wait_for(rig3.converged, 20)


def test_a_node_that_leaves_is_down_at_once_and_rejoins(rig3: LocalRig) -> None:
    os.kill(rig3.node("n3")["pid"], signal.SIGTERM)
    # A leave is announced, so it shows long before the age limit would.
    wait_for(lambda: rig3.converged(["n1", "n2"], {"n3": "down"}), 3.0, 0.1)
    assert not Path(rig3.node("n3")["socket"]).exists(), "a stopped node removes its socket"
    rig3.start_node("n3")
    wait_for(rig3.converged, 20)


def test_blocked_node_is_shown_blocked_everywhere(rig3: LocalRig) -> None:
    out = rig3.tool("mosctl", "--node", "n3", "block")
    assert out.returncode == 0, out.stderr
    assert "blocked" in out.stdout
    wait_for(lambda: rig3.converged(expect={"n1": "up", "n2": "up", "n3": "blocked"}), 10)
    assert rig3.tool("mosctl", "--node", "n3", "noblock").returncode == 0
    wait_for(rig3.converged, 10)


def test_client_with_wrong_key_is_refused_and_logged(rig3: LocalRig, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text("this-is-not-the-cluster-key-0123456789\n")
    out = rig3.tool("mosmon", "--json", "--node", "n1", "--key", str(wrong))
    assert out.returncode == 4
    assert out.stderr.strip().count("\n") == 0, "one line"
    assert "refused the cluster key" in out.stderr
    wait_for(lambda: "refused /mosix.v1.Admin/ClusterStatus" in rig3.log.read_text()
             and "wrong cluster key" in rig3.log.read_text(), 5)


def test_a_daemon_with_another_key_cannot_join(rig3: LocalRig, tmp_path: Path) -> None:
    key = tmp_path / "intruder.key"
    key.write_text("an-intruder-key-that-is-long-enough\n")
    port = free_port(["127.0.1.9"])
    intruder = subprocess.Popen(
        [str(BIN / "mosixd"), "--id", "intruder", "--listen", f"127.0.1.9:{port}", "--peers",
         rig3.node("n1")["address"], "--key-file", str(key), "--state-dir", str(tmp_path / "st"),
         "--socket", str(tmp_path / "intruder.sock"), "--load-source", "tasks", "--speed", "1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "intruder.log").open("wb"))
    rig3.extra_procs.append(intruder)
    wait_for(lambda: "refused our cluster key" in (tmp_path / "intruder.log").read_text(), 10)
    assert "intruder" not in (rig3.view("n1") or {})
    assert intruder.poll() is None, "a refused peer is retried, never a crash"


def test_stopping_the_local_cluster_leaves_no_process(tmp_path: Path) -> None:
    rig = start_rig(2, tmp_path)
    try:
        wait_for(rig.converged, 30)
        pids = [n["pid"] for n in rig.registry()["nodes"]]
        rig.proc.send_signal(signal.SIGTERM)
        assert rig.proc.wait(timeout=15) == 0
        for pid in pids:
            wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
        assert not (rig.runtime / "local.json").exists()
        out = rig.tool("mosmon", "--json")
        assert out.returncode == 3 and "no mosixd found" in out.stderr
    finally:
        rig.stop()


def test_supervisor_killed_hard_takes_its_nodes_along(tmp_path: Path) -> None:
    rig = start_rig(2, tmp_path)
    try:
        wait_for(lambda: len(rig.registry()["nodes"]) == 2, 10)
        pids = [n["pid"] for n in rig.registry()["nodes"]]
        rig.proc.kill()
        rig.proc.wait()
        for pid in pids:
            wait_for(lambda: not psutil.pid_exists(pid), 10)
    finally:
        rig.stop()


def test_clients_find_the_local_cluster_without_flags(rig3: LocalRig) -> None:
    out = rig3.tool("mosctl", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["node"]["id"] == "n1"
    assert status["cluster"] == {"up": 3, "down": 0, "blocked": 0}
    frame = rig3.tool("mosmon", "--once")
    assert frame.returncode == 0
    for node_id in ("n1", "n2", "n3"):
        assert node_id in frame.stdout


def test_second_local_cluster_is_refused_with_one_line(rig3: LocalRig) -> None:
    out = rig3.tool("mosixd", "--local", "2", "--port", str(rig3.port))
    assert out.returncode == 1
    assert "already running" in out.stderr and out.stderr.strip().count("\n") == 0
