"""Nodes known by name or by IPv6 address, as on real machines and in containers.

Who a node is never rests on two strings being equal: names are resolved, and addresses are
compared as addresses. Here the nodes of a local cluster advertise DNS names that resolve only
inside the cluster's own mount namespace (a hosts file the test makes), and a second cluster
runs on the IPv6 loopback address.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from conftest import BIN, LocalRig, can_mount_namespaces, counter, start_rig, wait_for

from mosixd.wire.auth import generate_key
from mosrun.runtime import frames

pytestmark = [pytest.mark.rig, pytest.mark.slow]

PY = sys.executable
DOMAIN = "mosix.test"  # reserved for tests (RFC 2606): never a real name



def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def named_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRig]:
    why = can_mount_namespaces()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("names")
    hosts = tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n"
                     + "".join(f"127.0.1.{i} n{i}.{DOMAIN}\n" for i in (1, 2, 3)))
    rig = start_rig(3, tmp, "--names", DOMAIN, hosts_file=hosts)
    try:
        wait_for(rig.converged, 30)
        yield rig
    finally:
        rig.stop()


def test_the_nodes_know_each_other_by_name(named_rig: LocalRig) -> None:
    for node_id in ("n1", "n2", "n3"):
        snap = json.loads(named_rig.tool("mosmon", "--json", "--node", node_id).stdout)
        assert {n["id"]: (n["address"], n["state"]) for n in snap["nodes"]} == {
            f"n{i}": (f"n{i}.{DOMAIN}:{named_rig.port}", "up") for i in (1, 2, 3)}


def test_a_task_on_a_node_known_by_name_uses_its_home_files(named_rig: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "def shout(text):\n    return text.upper()\n")
    (tmp_path / "data.txt").write_text("from home\n")
    write(tmp_path / "job.py", """
        import os, helper
        with open("data.txt") as f:
            text = f.read().strip()
        os.makedirs("out", exist_ok=True)
        with open("out/result.txt", "w") as f:
            f.write(helper.shout(text) + " on " + os.environ["MOSIX_NODE"])
        print("wrote", text)
    """)
    run = named_rig.mosrun("-r", "n2", PY, "job.py", cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, b"wrote from home\n", b"")
    assert (tmp_path / "out" / "result.txt").read_text() == "FROM HOME on n2"


def test_a_task_moves_between_nodes_known_by_name(named_rig: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", counter(80))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", PY, "job.py"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=named_rig.env)
    task = wait_for(lambda: next((t for t in named_rig.tasks("n1") if t["state"] == "running"), None), 15)
    for where in ("n3", "home"):
        out = named_rig.tool("migrate", "--json", task["id"], where, timeout=120)
        assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stdout + out.stderr
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)


def test_a_launch_refused_says_why_and_the_daemon_logs_it(named_rig: LocalRig) -> None:
    # A client that asks for the task's streams at another address than the one it was given.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(named_rig.node("n1")["session"])
        hello = frames.recv_frame(sock)
        assert hello is not None and hello[0]["t"] == "hello" and hello[0]["host"] == "127.0.1.1"
        frames.send_frame(sock, {"t": "launch", "argv": ["true"], "executable": "/bin/true", "cwd": "/",
                                 "streams_to": "127.0.0.9:4000", "streams_token": "00" * 32})
        answer = frames.recv_frame(sock)
    assert answer is not None
    assert answer[0]["t"] == "error" and answer[0]["code"] == 125
    assert answer[0]["message"] == ("malformed launch request (the task's streams must come to 127.0.1.1, "
                                    "not 127.0.0.9)")
    wait_for(lambda: "refused: malformed launch request" in named_rig.log.read_text(), 10)


# ---- IPv6 ------------------------------------------------------------------------------------

def _free_v6_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET6) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("::1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def v6_pair(tmp_path: Path) -> Iterator[tuple[dict[str, Path], dict[str, str]]]:
    """Two nodes on the IPv6 loopback address, each on a port of its own."""
    try:
        socket.socket(socket.AF_INET6).close()
        _free_v6_ports(1)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    key = tmp_path / "cluster.key"
    generate_key(key)
    ports = _free_v6_ports(2)
    addresses = {f"n{i}": f"[::1]:{port}" for i, port in enumerate(ports, 1)}
    sockets, procs = {}, []
    log = (tmp_path / "v6.log").open("wb")
    try:
        for node_id, address in addresses.items():
            state = tmp_path / node_id
            state.mkdir()
            sockets[node_id] = state / "mosixd.sock"
            peers = [a for n, a in addresses.items() if n != node_id]
            (state / "mosix.toml").write_text(textwrap.dedent(f"""\
                [node]
                id = "{node_id}"
                listen = "{address}"
                peers = {json.dumps(peers)}
                socket = "{sockets[node_id]}"
                state_dir = "{state}"
                key_file = "{key}"
                [load]
                source = "tasks"
                speed = 1.0
                [security]
                run_as_root = true
                """))
            procs.append(subprocess.Popen([str(BIN / "mosixd"), "--config", str(state / "mosix.toml")],
                                          stdout=log, stderr=subprocess.STDOUT))
        env = dict(os.environ, MOSIX_KEY_FILE=str(key), MOSIX_RUNTIME_DIR=str(tmp_path / "none"))
        env.pop("MOSIX_NODE", None)

        def both_up() -> bool:
            out = subprocess.run([str(BIN / "mosmon"), "--json", "--node", f"unix:{sockets['n1']}"],
                                 capture_output=True, text=True, env=env, timeout=10)
            return out.returncode == 0 and [n["state"] for n in json.loads(out.stdout)["nodes"]] == ["up", "up"]

        wait_for(both_up, 30)
        yield sockets, env
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_nodes_on_ipv6_run_and_move_a_task(v6_pair: tuple[dict[str, Path], dict[str, str]],
                                            tmp_path: Path) -> None:
    sockets, env = v6_pair
    write(tmp_path / "job.py", counter(60))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    session = str(sockets["n1"].with_name("mosrun.sock"))
    proc = subprocess.Popen([str(BIN / "mosrun"), "--node", session, "-r", "n2", PY, "job.py"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tool = [str(BIN / "mosps"), "--json", "--node", f"unix:{sockets['n1']}"]

    def running() -> dict | None:
        tasks = json.loads(subprocess.run(tool, capture_output=True, text=True, env=env, timeout=10).stdout)["tasks"]
        return next((t for t in tasks if t["state"] == "running"), None)

    task = wait_for(running, 15)
    assert task["where"] == "n2"
    out = subprocess.run([str(BIN / "migrate"), "--json", "--node", f"unix:{sockets['n1']}", task["id"], "home"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["node"] == "n1", out.stdout + out.stderr
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)
