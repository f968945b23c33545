"""The cluster core on the multi-process rig: real mosixd processes on 127.0.1.x."""

from __future__ import annotations

import json
import os
import signal
import stat
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


def _issue(rig: LocalRig | None, node_id: str, where: Path) -> list[str]:
    """``mosixd ca issue`` as an administrator runs it: with the rig's CA, or (rig None) a CA of
    its own made first in ``where``; the flags that give a daemon the certificate."""
    ca = where if rig is None else Path(rig.registry()["tls"]["ca"]).parent
    if rig is None:
        made = subprocess.run([str(BIN / "mosixd"), "ca", "init", "--dir", str(ca)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    made = subprocess.run([str(BIN / "mosixd"), "ca", "issue", node_id, "--dir", str(ca), "--out", str(where)],
                          capture_output=True, text=True)
    assert made.returncode == 0 and f"for node {node_id}" in made.stdout, made.stderr
    assert stat.S_IMODE((where / f"{node_id}.key").stat().st_mode) == 0o600
    return ["--tls-ca", str(ca / "ca.crt"), "--tls-cert", str(where / f"{node_id}.crt"),
            "--tls-key", str(where / f"{node_id}.key")]


def test_a_client_without_a_certificate_of_the_cluster_is_refused(rig3: LocalRig, tmp_path: Path) -> None:
    import grpc

    from mosixd.wire import mosix_pb2 as pb
    from mosixd.wire import mosix_pb2_grpc as rpc
    from mosixd.wire.auth import open_channel
    from mosixd.wire.tls import TlsFiles, load

    address = rig3.node("n1")["address"]
    other = tmp_path / "other-ca"
    _issue(None, "n1", other)  # a certificate for "n1", from another CA
    for channel in (grpc.insecure_channel(address),
                    open_channel(address, None, tls=load(TlsFiles(other / "ca.crt", other / "n1.crt",
                                                                 other / "n1.key")), expect="n1")):
        with channel, pytest.raises(grpc.RpcError) as info:
            rpc.AdminStub(channel).ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The tools over a port, as from another machine with only a (wrong) key: one line.
    wrong = tmp_path / "wrong.key"
    wrong.write_text("this-is-not-the-cluster-key-0123456789\n")
    env = dict(rig3.env, MOSIX_RUNTIME_DIR=str(tmp_path / "elsewhere"))
    out = rig3.tool("mosmon", "--json", "--node", address, "--key", str(wrong), env=env)
    assert out.returncode == 3 and out.stderr.count("\n") == 1
    assert f"cannot reach mosixd at {address} (unavailable; tried with key {wrong})" in out.stderr
    assert rig3.converged()


def test_a_daemon_of_another_ca_cannot_join_and_a_node_speaks_only_for_itself(rig3: LocalRig, tmp_path: Path) -> None:
    def daemon(node_id: str, host: str, flags: list[str], log: Path) -> subprocess.Popen[bytes]:
        port = free_port([host])
        proc = subprocess.Popen(
            [str(BIN / "mosixd"), "--id", node_id, "--listen", f"{host}:{port}", "--peers",
             rig3.node("n1")["address"], *flags, "--state-dir", str(tmp_path / node_id / "state"),
             "--socket", str(tmp_path / node_id / "mosixd.sock"), "--load-source", "tasks", "--speed", "1"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        rig3.extra_procs.append(proc)
        return proc

    stranger_log, liar_log = tmp_path / "stranger.log", tmp_path / "liar.log"
    (tmp_path / "stranger").mkdir()
    (tmp_path / "n2").mkdir()
    stranger = daemon("stranger", "127.0.1.9", _issue(None, "stranger", tmp_path / "stranger"), stranger_log)
    # A real certificate of the cluster, for n8, on a daemon that says it is n2.
    liar = daemon("n2", "127.0.1.8", _issue(rig3, "n8", tmp_path / "n2"), liar_log)
    wait_for(lambda: "unreachable" in stranger_log.read_text(), 15)
    wait_for(lambda: "permission_denied" in liar_log.read_text(), 15)
    assert "cannot speak for 'n2'" in liar_log.read_text()
    view = rig3.view("n1") or {}
    assert "stranger" not in view and "n8" not in view
    assert rig3.converged()  # n2 itself is untouched
    assert stranger.poll() is None and liar.poll() is None, "a refused peer is retried, never a crash"


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
         *_issue(rig3, "n9", tmp_path), "--state-dir", str(tmp_path / "n9"),
         "--socket", str(tmp_path / "n9.sock"), "--load-source", "tasks", "--speed", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rig3.extra_procs.append(late)
    # n1 and n2 were never told about n9: they learn it through gossip, without restart.
    wait_for(lambda: rig3.converged(["n1", "n2", "n3"], {"n9": "up", "n1": "up", "n2": "up", "n3": "up"}), 15)
    snap = json.loads(rig3.tool("mosmon", "--json", "--node", f"unix:{tmp_path / 'n9.sock'}").stdout)
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


def test_a_node_runs_no_more_guest_tasks_than_its_limit(rig3: LocalRig, tmp_path: Path) -> None:
    port = free_port(["127.0.1.9"])
    late = subprocess.Popen(
        [str(BIN / "mosixd"), "--id", "n9", "--listen", f"127.0.1.9:{port}", "--peers", rig3.node("n1")["address"],
         *_issue(rig3, "n9", tmp_path), "--state-dir", str(tmp_path / "n9"), "--socket", str(tmp_path / "n9.sock"),
         "--load-source", "tasks", "--speed", "1", "--run-as-root", "--max-guest-tasks", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rig3.extra_procs.append(late)
    wait_for(lambda: (rig3.view("n1") or {}).get("n9") == "up", 15)
    first = subprocess.Popen([str(BIN / "mosrun"), "-r", "n9", "sleep", "30"], env=rig3.env)
    try:
        wait_for(lambda: any(t["where"] == "n9" and t["state"] == "running" for t in rig3.tasks("n1")), 15)
        second = rig3.mosrun("-r", "n9", "sleep", "1", cwd=tmp_path)
        assert second.returncode == 125
        assert second.stderr.decode() == (
            "mosrun: no node can take the task (n9: node runs 1 guest tasks, its limit (limits.guest_tasks))\n")
    finally:
        first.terminate()
        first.wait(timeout=20)
