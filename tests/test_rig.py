"""The cluster core on the multi-process rig: real mosixd processes on 127.0.1.x."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import BIN, LocalRig, free_port, gone, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]

FRESH = 5.0  # seconds: an entry in a 3-node cluster is never older (1 s gossip interval)
DOWN_WITHIN = 15.0  # seconds: a kill -9 is confirmed well within this (bench.members has the figure)


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
            assert 0 <= n["age"] < FRESH


def test_kill_9_is_seen_down_and_restart_comes_back_up(rig3: LocalRig) -> None:
    victim = rig3.node("n2")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: rig3.converged(["n1", "n3"], {"n2": "down", "n1": "up", "n3": "up"}), DOWN_WITHIN, 0.1)
    log = rig3.log.read_text()
    assert "peer n2 " in log and "is suspect" in log and "is down: confirmed dead" in log
    rig3.start_node("n2")
    wait_for(rig3.converged, 20)


def test_a_node_that_leaves_is_left_at_once_and_rejoins(rig3: LocalRig) -> None:
    os.kill(rig3.node("n3")["pid"], signal.SIGTERM)
    # A leave is announced: no probe, no suspicion, no wait.
    wait_for(lambda: rig3.converged(["n1", "n2"], {"n3": "left"}), 3.0, 0.1)
    assert "n3 (127.0.1.3" in rig3.log.read_text() and "is suspect" not in rig3.log.read_text()
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
    # A key is used only over the network: ask n1's port as if from another machine.
    env = dict(rig3.env, MOSIX_RUNTIME_DIR=str(tmp_path / "elsewhere"))
    out = rig3.tool("mosmon", "--json", "--node", rig3.node("n1")["address"], "--key", str(wrong), env=env)
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
            wait_for(lambda: gone(pid), 5)
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
            wait_for(lambda: gone(pid), 10)
    finally:
        rig.stop()


def test_clients_find_the_local_cluster_without_flags(rig3: LocalRig) -> None:
    out = rig3.tool("mosctl", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["node"]["id"] == "n1"
    assert status["cluster"] == {"up": 3, "blocked": 0, "suspect": 0, "down": 0, "left": 0}
    frame = rig3.tool("mosmon", "--once")
    assert frame.returncode == 0
    for node_id in ("n1", "n2", "n3"):
        assert node_id in frame.stdout


def test_second_local_cluster_is_refused_with_one_line(rig3: LocalRig) -> None:
    out = rig3.tool("mosixd", "--local", "2", "--port", str(rig3.port))
    assert out.returncode == 1
    assert "already running" in out.stderr and out.stderr.strip().count("\n") == 0


def test_a_late_node_naming_one_seed_is_known_to_all(rig3: LocalRig, tmp_path: Path) -> None:
    port = free_port(["127.0.1.9"])
    late = subprocess.Popen(
        [str(BIN / "mosixd"), "--id", "n9", "--listen", f"127.0.1.9:{port}", "--peers", rig3.node("n3")["address"],
         "--key-file", rig3.registry()["key_file"], "--state-dir", str(tmp_path / "n9"),
         "--socket", str(tmp_path / "n9.sock"), "--load-source", "tasks", "--speed", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rig3.extra_procs.append(late)
    # n1 and n2 were never told about n9: they learn it through gossip, without restart.
    wait_for(lambda: rig3.converged(["n1", "n2", "n3"], {"n9": "up", "n1": "up", "n2": "up", "n3": "up"}), 15)
    snap = json.loads(rig3.tool("mosmon", "--json", "--node", f"unix:{tmp_path / 'n9.sock'}",
                                "--key", rig3.registry()["key_file"]).stdout)
    assert {n["id"] for n in snap["nodes"]} == {"n1", "n2", "n3", "n9"}


def test_host_load_source_shows_real_cpu_demand(tmp_path: Path) -> None:
    from mosixd.wire.auth import generate_key

    key = tmp_path / "k"
    generate_key(key)
    sock = tmp_path / "h.sock"
    node = subprocess.Popen(
        [str(BIN / "mosixd"), "--id", "h1", "--listen", f"127.0.1.10:{free_port(['127.0.1.10'])}",
         "--key-file", str(key), "--state-dir", str(tmp_path / "h"), "--socket", str(sock),
         "--load-source", "host", "--cpus", "1", "--speed", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    busy = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 60\nwhile time.time() < end: pass"])
            for _ in range(2)]
    env = dict(os.environ, MOSIX_NODE=f"unix:{sock}", MOSIX_KEY_FILE=str(key))

    def load() -> float:
        out = subprocess.run([str(BIN / "mosmon"), "--json"], capture_output=True, text=True, env=env, timeout=10)
        return json.loads(out.stdout)["nodes"][0]["load"] if out.returncode == 0 else 0.0

    try:
        # Two CPU-bound processes on a node that claims one standard CPU: load well above 1
        # once the slow rise has caught up (the host may be busier still, never idler).
        wait_for(lambda: load() > 1.2, 20, 0.5)
    finally:
        for proc in busy:
            proc.kill()
        node.terminate()
        node.wait(timeout=10)


def test_readme_main_command_brings_up_and_tears_down_an_ephemeral_cluster(tmp_path: Path) -> None:
    env = dict(os.environ, MOSIX_RUNTIME_DIR=str(tmp_path / "rt"))
    env.pop("MOSIX_NODE", None)
    out = subprocess.run([str(BIN / "mosmon"), "--local", "3", "--once"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("n")]
    assert sorted(r[0] for r in rows) == ["n1", "n2", "n3"]
    assert all("up" in r for r in rows)
    assert not (tmp_path / "rt" / "local.json").exists(), "the ephemeral cluster is gone afterwards"
