"""Users on the rig: the tools' socket knows who asks from the kernel, not from a key.

The daemons of ``mosixd --local 2`` run as root, and so do the tasks started by root's
mosrun. Another user, made for these tests and removed after them, then speaks to the same
tools socket from a child that gave up root: nothing of this install needs to be readable by
that user.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import BIN, LocalRig, counter, start_rig, wait_for

from mosrun.runtime import frames

HOGS = int(os.environ.get("MOSIX_TEST_HOGS", "10000"))  # connections per hog process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to speak as another user")


# Run in a fresh interpreter started as root, which then becomes the user: forking the test
# process itself is unsafe once gRPC's threads run in it, and the interpreter's files need
# not be readable by that user. Everything is imported before the switch.
SPEAKER = """
import json, os, resource, socket, sys, time
from mosrun.runtime import frames
job = json.loads(sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
os.setgroups([])
os.setgid(job["gid"])
os.setuid(job["uid"])
if job["calls"]:
    answers = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(job["paths"][0])
        for call in job["calls"]:
            frames.send_frame(sock, call)
            frame = frames.recv_frame(sock)
            answers.append(frame[0] if frame else {"t": "closed"})
    print(json.dumps(answers), flush=True)
else:  # hold idle connections, waiting out a full backlog as a determined user would
    held, deadline = [], time.monotonic() + 120
    for i in range(job["count"]):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        while time.monotonic() < deadline:
            try:
                sock.connect(job["paths"][i % len(job["paths"])])
                held.append(sock)
                break
            except BlockingIOError:
                time.sleep(0.001)
        else:
            break
    print(len(held), flush=True)
    time.sleep(600)
"""


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="module")
def stranger() -> Iterator[User]:
    """A throw-away local user, made for these tests and removed after them."""
    name = f"mxt{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)  # if userdel left it


def _speaker(user: User, paths: list[str], calls: list[dict[str, Any]] | None = None,
             count: int = 0) -> subprocess.Popen[str]:
    job = json.dumps({"uid": user.uid, "gid": user.gid, "paths": paths, "calls": calls or [], "count": count})
    return subprocess.Popen([sys.executable, "-c", SPEAKER, job], stdout=subprocess.PIPE, text=True)


def as_user(user: User, path: str, calls: list[dict[str, Any]], timeout: float = 30.0) -> list[dict[str, Any]]:
    """Send ``calls`` over the Unix socket at ``path`` as ``user``; the answers' headers."""
    proc = _speaker(user, [path], calls)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out)


@pytest.fixture(scope="module")
def rig2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rig = start_rig(2, tmp_path_factory.mktemp("users"))
    try:
        wait_for(rig.converged, 30)
        # Let other users reach the sockets (never read the key): traverse-only directories.
        for directory in [rig.runtime, *[Path(rig.node(n)["socket"]).parent for n in ("n1", "n2")]]:
            for d in [directory, *directory.parents]:
                if d == Path("/"):
                    break
                d.chmod(d.stat().st_mode | stat.S_IXOTH)
        yield rig
    finally:
        rig.stop()


def _running_task(rig: LocalRig, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    (tmp_path / "job.py").write_text(counter(2000, pause=0.05))
    import subprocess

    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", "python", "job.py"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
    task = wait_for(lambda: next((t for t in rig.tasks("n1") if t["state"] == "running"), None), 30)
    return proc, task


def test_another_user_sees_the_cluster_but_not_roots_tasks_and_cannot_move_them(rig2: LocalRig, tmp_path: Path,
                                                                                 stranger: User) -> None:
    proc, task = _running_task(rig2, tmp_path)
    try:
        path = rig2.node("n1")["socket"]
        status, tasks, move, block, bogus = as_user(stranger, path, [
            {"t": "call", "op": "status", "args": {}},
            {"t": "call", "op": "tasks", "args": {}},
            {"t": "call", "op": "migrate", "args": {"task": task["id"], "target": "n1"}},
            {"t": "call", "op": "block", "args": {"blocked": True}},
            {"t": "call", "op": "../../etc/passwd", "args": {}},
        ])
        assert status["t"] == "reply" and {n["id"] for n in status["result"]["nodes"]} == {"n1", "n2"}
        assert tasks["t"] == "reply" and tasks["result"]["tasks"] == [] and tasks["result"]["others"] >= 1
        assert move["t"] == "reply" and not move["result"]["ok"]
        assert f"only the owner of task {task['id']} (root) or root may move it" in move["result"]["message"]
        assert block == {"t": "error", "code": "refused",
                         "message": f"only root may block or unblock a node ({stranger.name} may not)"}
        assert bogus["t"] == "error" and bogus["code"] == "invalid"
        # Nothing moved, nothing blocked; root still sees and moves its own task.
        assert next(t for t in rig2.tasks("n1") if t["id"] == task["id"])["where"] == "n2"
        assert rig2.view("n1") == {"n1": "up", "n2": "up"}
        moved = rig2.tool("migrate", "--json", "--node", "n1", task["id"], "n1", timeout=60)
        assert moved.returncode == 0 and json.loads(moved.stdout)["ok"], moved.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_tools_need_no_key_and_a_port_needs_a_node_certificate(rig2: LocalRig, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text("0123456789abcdef0123456789abcdef\n")
    wrong.chmod(0o600)
    env = dict(rig2.env, MOSIX_KEY_FILE=str(wrong))
    local = rig2.tool("mosmon", "--json", "--node", "n1", env=env)
    assert local.returncode == 0, local.stderr  # the socket: the kernel vouches, no key read
    # Seen from a machine without the local cluster's registry, the address is a remote node.
    env["MOSIX_RUNTIME_DIR"] = str(tmp_path / "elsewhere")
    remote = rig2.tool("mosmon", "--json", "--node", rig2.node("n1")["address"], env=env)
    assert remote.returncode == 3 and len(remote.stderr.splitlines()) == 1
    assert f"(unavailable; tried with key {wrong})" in remote.stderr


def test_garbage_on_the_tools_socket_costs_one_connection(rig2: LocalRig) -> None:
    path = rig2.node("n1")["socket"]
    before = len(rig2.log.read_text())
    for junk in (b"\x00" * 3, b"\xff" * 64, frames.PREFIX.pack(10, 0) + b"not json!!", b"GET / HTTP/1.1\r\n\r\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(1 << 16):  # the daemon closes its end
                pass
    time.sleep(0.2)
    assert rig2.view("n1") == {"n1": "up", "n2": "up"}
    log = rig2.log.read_text()[before:]
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_twenty_thousand_idle_connections_of_one_user_leave_the_others_working(rig2: LocalRig, tmp_path: Path,
                                                                                stranger: User) -> None:
    paths = [rig2.node("n1")["socket"], rig2.node("n1")["session"]]
    hogs = []
    try:
        for _ in range(2):  # 10,000 each: a process may hold no more descriptors here
            hogs.append(_speaker(stranger, paths, count=HOGS))
        held = [int(hog.stdout.readline() or 0) for hog in hogs]  # type: ignore[union-attr]
        assert sum(held) == 2 * HOGS, held  # every connect went through (most refused at once)
        # Meanwhile root, another user, is served as if nothing happened.
        watched = rig2.tool("mosmon", "--json", "--node", "n1", timeout=30)
        assert watched.returncode == 0, watched.stderr
        ran = rig2.mosrun("-r", "n2", "python", "-c", "print(6 * 7)", cwd=tmp_path, timeout=60)
        assert (ran.returncode, ran.stdout) == (0, b"42\n"), ran.stderr
        log = rig2.log.read_text()
        assert "the limit per user (limits.sessions_per_user)" in log or "limits.sessions_per_user" in log
    finally:
        for hog in hogs:
            hog.kill()
            hog.communicate(timeout=30)
    wait_for(lambda: json.loads(rig2.tool("mosctl", "--node", "n1", "status", "--json").stdout)["tables"]["sessions"] == 0,
             30)


def test_gossip_from_a_node_about_nodes_no_certificate_vouches_for_is_dropped(rig2: LocalRig, tmp_path: Path) -> None:
    """A node of the cluster (its certificate is good) names a node "evil" at an address of
    its own, and says n2 moved there. Neither enters n1's table: nothing there shows evil's
    or n2's certificate."""
    import grpc

    from mosixd.core.gossip import Entry
    from mosixd.core.loadvector import LoadVector
    from mosixd.wire import codec
    from mosixd.wire import mosix_pb2_grpc as rpc
    from mosixd.wire.auth import open_channel
    from mosixd.wire.tls import issue, load

    tls_dir = rig2.runtime / "local" / "tls"
    liar = load(issue(tls_dir, "n9", tmp_path))
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)  # a listener of the liar's own: accepts, never shows a certificate
    fake = f"127.0.0.1:{trap.getsockname()[1]}"
    n2 = rig2.node("n2")["address"]
    before = len(rig2.log.read_text())
    entries = [Entry("evil", fake, 1, 0, 0.0, False, False, LoadVector()),
               Entry("n2", fake, 99, 0, 0.0, False, False, LoadVector())]
    try:
        with open_channel(rig2.node("n1")["address"], None, tls=liar, expect="n1") as channel:
            stub = rpc.GossipStub(channel)
            for _ in range(3):
                stub.Exchange(codec.gossip_message("n9", fake, entries), timeout=10)
            # Nor may it speak as another node.
            with pytest.raises(grpc.RpcError) as refused:
                stub.Exchange(codec.gossip_message("n2", fake, entries), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        wait_for(lambda: "gossip named node evil at" in rig2.log.read_text()[before:], 20)
        time.sleep(2 * 0.5)  # rounds of gossip: nothing changes
        for node in ("n1", "n2"):
            out = rig2.tool("mosmon", "--json", "--node", node)
            nodes = {n["id"]: n for n in json.loads(out.stdout)["nodes"]}
            assert "evil" not in nodes and nodes["n2"]["address"] == n2 and nodes["n2"]["state"] == "up"
        assert rig2.log.read_text()[before:].count("gossip named node evil at") == 1  # said once
    finally:
        trap.close()
