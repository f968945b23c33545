"""The compose rig for real: three containers, each with its own disk and network, as users
run ``docker-compose.yml``.

The image is built offline from a wheelhouse, on ``python:3.11-slim`` or, where no registry
can be reached, on a base built from the distribution. The nodes are known by their names
(n1, n2, n3) and get addresses from 198.18.0.0/15 only, on an internal network: nothing they
send leaves the machine. Every test uses the same cluster and leaves it as it found it; the
cluster, its network, volumes and image are removed at the end, also after a failure.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from typing import Iterator

import pytest
from conftest import counter, done_line, wait_for
from containers import NODES, PROJECT, Compose, Engine, Unavailable, docker_cli, run, wheelhouse

# The first test also waits for the engine, the base image and the build (minutes on a clean machine).
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1200)]

WORK = "/work"  # the user's directory on n1, the home node



@pytest.fixture(scope="module")
def cluster(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    try:
        base = docker_engine.base_image()
    except Unavailable as exc:
        pytest.skip(str(exc))
    wheelhouse()
    compose = Compose(docker_engine, tmp_path_factory.mktemp("compose"), base)
    try:
        compose("up", "-d", "--build", timeout=900)
        wait_for(compose.converged, 60)
        yield compose
    finally:
        compose("down", "--volumes", "--rmi", "local", "--remove-orphans", check=False)
        assert compose.leftovers() == []


def running_on(cluster: Compose, node: str) -> dict:
    return wait_for(lambda: next((t for t in cluster.tasks() if t["state"] == "running" and t["where"] == node),
                                 None), 30)


def back_up(cluster: Compose, node: str) -> None:
    """Start a node a test stopped, and wait until the cluster is whole again."""
    cluster("start", node)
    wait_for(cluster.converged, 60)


def mosrun(cluster: Compose, *args: str, cwd: str = WORK, user: str | None = None) -> subprocess.Popen[str]:
    command = " ".join(shlex.quote(a) for a in args)
    return subprocess.Popen(cluster.argv("n1", "sh", "-c", f"cd {cwd} && exec mosrun {command}", user=user),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)


def local_run(cluster: Compose, script: str) -> subprocess.CompletedProcess[str]:
    return cluster.sh("n1", f"cd {WORK} && python {script}")


# ---- the tests ----------------------------------------------------------------------------------

def test_the_three_nodes_know_each_other_by_name(cluster: Compose) -> None:
    for node in NODES:
        done = cluster.sh(node, "mosmon --json")
        nodes = {n["id"]: (n["address"], n["state"]) for n in json.loads(done.stdout)["nodes"]}
        assert nodes == {n: (f"{n}:7410", "up") for n in NODES}
    # Their addresses come from the test's subnet in the benchmarking range.
    inspect = run([docker_cli(), "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                   *(f"{PROJECT}_{n}_1" for n in NODES)], env=cluster.env).stdout.split()
    assert all(ip.startswith("198.19.200.") for ip in inspect), inspect


def test_a_script_with_its_module_and_files_runs_on_n2_and_writes_at_home(cluster: Compose) -> None:
    cluster.put("n1", f"{WORK}/helper.py", "def double(xs):\n    return [2 * x for x in xs]\n")
    cluster.put("n1", f"{WORK}/data/input.txt", "1 2 3\n")
    cluster.put("n1", f"{WORK}/job.py", """
        import json, os, socket, helper
        with open("data/input.txt") as f:
            numbers = [int(x) for x in f.read().split()]
        os.makedirs("out", exist_ok=True)
        with open("out/result.json", "w") as f:
            json.dump({"doubled": helper.double(numbers), "host": socket.gethostname()}, f)
        print("done on", os.environ["MOSIX_NODE"])
    """)
    proc = mosrun(cluster, "-r", "n2", "python", "job.py")
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout, stderr) == (0, "done on n2\n", "")
    result = json.loads(cluster.sh("n1", f"cat {WORK}/out/result.json").stdout)
    assert result == {"doubled": [2, 4, 6], "host": "n2"}  # computed on n2, stored on n1
    assert cluster.sh("n2", f"test -e {WORK}/out/result.json").returncode != 0


def test_a_resumable_task_moves_from_n2_to_n3_and_home_with_a_local_runs_output(cluster: Compose) -> None:
    cluster.put("n1", f"{WORK}/counter.py", counter(100, ballast=1 << 20))
    local = local_run(cluster, "counter.py")
    proc = mosrun(cluster, "-r", "n2", "python", "counter.py")
    task = running_on(cluster, "n2")
    for where in ("n3", "home"):
        done = cluster.sh("n1", f"migrate --json {task['id']} {where}")
        assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stdout + done.stderr
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout, stderr) == (local.returncode, local.stdout, local.stderr)


def test_killing_the_executing_node_restarts_a_checkpointed_task_elsewhere(cluster: Compose) -> None:
    cluster.put("n1", f"{WORK}/counter.py", counter(100, ballast=1024))
    proc = mosrun(cluster, "-A", "0.5", "-r", "n2", "python", "counter.py")
    task = running_on(cluster, "n2")
    wait_for(lambda: cluster.sh("n1", f"ls /var/lib/mosix/checkpoints | grep -q '^{task['id']}\\.'")
             .returncode == 0, 30)
    try:
        cluster("kill", "n2")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout.splitlines()[-1] == done_line(100, 1024)
        assert f"mosrun: node n2 running task {task['id']} was lost; restarted on n" in stderr
    finally:
        back_up(cluster, "n2")


def test_stopping_the_executing_node_moves_its_task_away_first(cluster: Compose) -> None:
    cluster.put("n1", f"{WORK}/counter.py", counter(100, ballast=1 << 20))
    local = local_run(cluster, "counter.py")
    proc = mosrun(cluster, "-r", "n2", "python", "counter.py")
    task = running_on(cluster, "n2")
    try:
        stopping = threading.Thread(target=cluster, args=("stop", "n2"))
        started = time.monotonic()
        stopping.start()
        moved = wait_for(lambda: next((t["where"] for t in cluster.tasks()
                                       if t["id"] == task["id"] and t["where"] != "n2"), None), 60)
        assert moved in ("n1", "n3") and time.monotonic() - started < 60
        stdout, stderr = proc.communicate(timeout=120)
        assert (proc.returncode, stdout, stderr) == (local.returncode, local.stdout, local.stderr)
        stopping.join(timeout=100)
        assert not stopping.is_alive()
        logs = cluster("logs", "--no-color", "n2").stdout
        assert f"task {task['id']} moved to {moved} before the node left" in logs
    finally:
        back_up(cluster, "n2")


def test_a_restarted_node_rejoins_and_takes_tasks(cluster: Compose) -> None:
    cluster("restart", "n3")
    wait_for(cluster.converged, 60)
    proc = mosrun(cluster, "-r", "n3", "python", "-c", "import os; print('on', os.environ['MOSIX_NODE'])")
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout, stderr) == (0, "on n3\n", "")


def test_every_user_uses_the_cluster_holds_no_key_and_only_root_blocks_a_node(cluster: Compose) -> None:
    # As README says: a user account on every node (same uid); no group, no key.
    for node in NODES:
        done = cluster.sh(node, "id alice >/dev/null 2>&1 || useradd -m -u 1500 alice; "
                                "id bob >/dev/null 2>&1 || useradd -m -u 1501 bob")
        assert done.returncode == 0, done.stderr
    cluster.put("n1", "/home/alice/job.py", "import os\nopen('made-here', 'w').write(str(os.getuid()))\n"
                                            "print('alice runs as', os.getuid(), 'on', os.environ['MOSIX_NODE'])\n")
    cluster.sh("n1", "chown alice /home/alice/job.py")
    proc = mosrun(cluster, "-r", "n2", "python", "job.py", cwd="/home/alice", user="alice")
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout, stderr) == (0, "alice runs as 1500 on n2\n", "")
    assert cluster.sh("n1", "stat -c '%U %s' /home/alice/made-here").stdout == "alice 4\n"
    watched = cluster.sh("n1", "mosmon --once", user="alice")
    assert watched.returncode == 0 and "3 up" in watched.stdout, watched.stderr
    # The key is the nodes' alone.
    assert cluster.sh("n1", "stat -c '%a %U' /etc/mosix/tls/node.key").stdout == "600 root\n"
    assert cluster.sh("n1", "cat /etc/mosix/tls/node.key", user="bob").returncode != 0
    # bob may look, but not block the node: one line that says why.
    assert cluster.sh("n1", "mosmon --once", user="bob").returncode == 0
    refused = cluster.sh("n1", "mosctl block", user="bob")
    assert refused.returncode == 4 and refused.stderr.splitlines() == [
        "mosctl: this host: only root may block or unblock a node (bob may not)"], refused.stderr
