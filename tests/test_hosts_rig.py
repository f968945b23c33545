"""The suites on separate hosts: each node in its own network and mount namespaces, on a link
with the latency and rate of a LAN (``tests/rig.py``), known by name.

What the loopback rig cannot catch shows here: a node sees none of the home's files but through
mosix, its connections come from its own address, and each packet crosses a real link.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import pytest
from conftest import counter, wait_for
from rig import HostsRig, leftovers, unavailable
from test_mosrun_python_rig import CORPUS, HELPERS

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(600)]

HOME = "/home/user"   # the user's directory on n1, the home node
PY = sys.executable  # the virtualenv's python: the same path on every node


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostsRig]:
    if why := unavailable():
        pytest.skip(why)
    rig = HostsRig(3)
    try:
        rig.up("lan")
        wait_for(rig.converged, 60)
        yield rig
    finally:
        rig.down()
        assert leftovers() == []


def mosrun(rig: HostsRig, *args: str, cwd: str = HOME) -> subprocess.Popen[str]:
    return rig.popen("n1", ["mosrun", *args], cwd=cwd)


def tasks(rig: HostsRig) -> list[dict]:
    done = rig.run("n1", ["mosps", "--json"])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["tasks"]


def running_on(rig: HostsRig, node: str) -> dict:
    return wait_for(lambda: next((t for t in tasks(rig) if t["state"] == "running" and t["where"] == node), None),
                    30)


def local_run(rig: HostsRig, script: str, cwd: str = HOME, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return rig.run("n1", [PY, script], cwd=cwd, input=stdin)


# ---- the rig itself ----------------------------------------------------------------------------

def test_each_node_is_a_host_of_its_own(hosts: HostsRig) -> None:
    hosts.put("n1", f"{HOME}/secret.txt", "n1 only\n")
    assert hosts.sh("n1", f"cat {HOME}/secret.txt").stdout == "n1 only\n"
    for node in ("n2", "n3"):
        assert hosts.sh(node, f"test -e {HOME}/secret.txt").returncode != 0
        # Its own address, and no route but to the nodes' network.
        routes = hosts.run(node, ["ip", "-o", "route"]).stdout
        assert "default" not in routes and f"{hosts.address(node)}" in hosts.run(node, ["ip", "-o", "addr"]).stdout
    # The interpreter and the project are there, read-only.
    assert hosts.sh("n2", f"test -x {PY} && ! touch {os.path.dirname(PY)}/x 2>/dev/null").returncode == 0
    # The daemons' connections to each other come from their own addresses.
    established = hosts.run("n2", ["ss", "-tnH", "state", "established"]).stdout.splitlines()
    local = {line.split()[2].rpartition(":")[0].strip("[]").removeprefix("::ffff:") for line in established}
    assert local == {hosts.address("n2")}, established


def test_the_link_shows_its_profile_and_partitions_cut_it(hosts: HostsRig) -> None:
    lan = statistics.median(hosts.ping("n1", "n2", 30, 0.005)["rtt"])
    assert lan >= 0.0002  # at least the profile's round trip
    assert hosts.stream("n1", "n2", 200) <= 1.05e9 / 8  # no faster than the rate
    try:
        hosts.link("wan")
        wan = hosts.ping("n1", "n2", 20, 0.01)
        assert statistics.median(wan["rtt"]) >= 0.020
        assert hosts.stream("n1", "n2", 20) <= 1.05e8 / 8
        hosts.partition("n1", "n3")
        assert hosts.ping("n1", "n3", 3, 0.01)["rtt"] == []
        assert hosts.ping("n1", "n2", 3, 0.01)["rtt"] != []
    finally:
        hosts.heal()
        hosts.link("lan")
    assert hosts.ping("n1", "n3", 3, 0.01)["rtt"] != []


# ---- membership over a real link --------------------------------------------------------------------

def test_one_cut_link_does_not_make_a_healthy_node_suspect(hosts: HostsRig) -> None:
    # n1 cannot reach n3, but n2 reaches both: n1 has n2 probe n3 for it, and n3 stays up.
    try:
        hosts.partition("n1", "n3")
        seen = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            seen.append((hosts.view("n1") or {}).get("n3"))
            time.sleep(0.3)
        assert set(seen) == {"up"}, seen
        assert "unreachable" in hosts.log("n1") and "is suspect" not in hosts.log("n1")
    finally:
        hosts.heal()


def test_a_partition_is_confirmed_on_both_sides_and_heals(hosts: HostsRig) -> None:
    try:
        hosts.partition("n1", "n3")
        hosts.partition("n2", "n3")
        wait_for(lambda: all((hosts.view(n) or {}).get("n3") == "down" for n in ("n1", "n2"))
                 and hosts.view("n3") == {"n1": "down", "n2": "down", "n3": "up"}, 60, 0.5)
    finally:
        hosts.heal()
    # A node tries one dead node every 10 s; the first contact tells each side it was thought
    # dead, each refutes with a higher incarnation, and everybody takes everybody back.
    wait_for(hosts.converged, 90, 0.5)
    assert "peer n3 (n3:" in hosts.log("n1") and "is up again" in hosts.log("n1")


# ---- the suites, on separate hosts -----------------------------------------------------------------

def test_a_killed_node_is_seen_down_and_comes_back_up(hosts: HostsRig) -> None:
    os.kill(hosts.daemon_pid("n3"), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: (hosts.view("n1") or {}).get("n3") == "down", 15)
    assert time.monotonic() - killed < 10
    hosts.start_daemon("n3")
    wait_for(hosts.converged, 30)


@pytest.mark.parametrize("script", sorted(CORPUS))
def test_python_programs_on_another_host_behave_as_at_home(hosts: HostsRig, script: str) -> None:
    work = f"{HOME}/corpus-{script[:-3]}"
    for name, text in {**CORPUS, **HELPERS}.items():
        hosts.put("n1", f"{work}/{name}", textwrap.dedent(text))
    stdin = bytes(range(256)) * 4000 if script == "stdin_to_eof.py" else b""
    local = hosts.run("n1", [PY, script], cwd=work, input=stdin, text=False)
    hosts.sh("n1", f"rm -rf {work}/out")
    remote = hosts.run("n1", ["mosrun", "-r", "n2", PY, script], cwd=work, input=stdin, text=False)
    assert (remote.stdout, remote.stderr) == (local.stdout, local.stderr)
    assert remote.returncode == (128 - local.returncode if local.returncode < 0 else local.returncode)


def test_a_task_moves_between_hosts_with_a_local_runs_output(hosts: HostsRig) -> None:
    hosts.put("n1", f"{HOME}/counter.py", counter(100, ballast=4 << 20))
    local = local_run(hosts, "counter.py")
    proc = mosrun(hosts, "-r", "n2", PY, "counter.py")
    task = running_on(hosts, "n2")
    for where in ("n3", "home", "n2"):
        done = hosts.run("n1", ["migrate", "--json", task["id"], where])
        assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stdout + done.stderr
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stdout, stderr) == (local.returncode, local.stdout, local.stderr)


def test_a_move_over_a_wan_link_keeps_the_output(hosts: HostsRig) -> None:
    hosts.put("n1", f"{HOME}/counter.py", counter(60, pause=0.1))
    local = local_run(hosts, "counter.py")
    try:
        hosts.link("wan")
        proc = mosrun(hosts, "-r", "n2", PY, "counter.py")
        task = running_on(hosts, "n2")
        done = hosts.run("n1", ["migrate", "--json", task["id"], "n3"], timeout=180)
        assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stdout + done.stderr
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        hosts.link("lan")
    assert (proc.returncode, stdout, stderr) == (local.returncode, local.stdout, local.stderr)


def test_a_checkpointed_task_survives_the_death_of_its_host(hosts: HostsRig) -> None:
    hosts.put("n1", f"{HOME}/counter.py", counter(80))
    proc = mosrun(hosts, "-A", "0.5", "-r", "n2", PY, "counter.py")
    task = running_on(hosts, "n2")
    wait_for(lambda: hosts.sh("n1", f"ls /tmp/mosix/state/checkpoints | grep -q '^{task['id']}\\.'")
             .returncode == 0, 30)
    try:
        os.kill(hosts.daemon_pid("n2"), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert stdout == local_run(hosts, "counter.py").stdout  # exactly once
        assert f"mosrun: node n2 running task {task['id']} was lost; restarted on n" in stderr
    finally:
        hosts.start_daemon("n2")
        wait_for(hosts.converged, 30)


def test_a_silent_partition_from_the_node_running_a_task_ends_it_on_both_sides(hosts: HostsRig) -> None:
    """Packets between the home and the task's node vanish (a blackhole, as a pulled cable):
    neither side hears an error, only the keepalives tell. mosrun reports the lost node within
    their bound (README: about 30 s), and the node ends its copy, whose home went silent."""
    hosts.put("n1", f"{HOME}/long.py", counter(4000, pause=0.05))
    wait_for(hosts.converged, 60, 0.5)  # n2 may have been restarted by the test before
    proc = mosrun(hosts, "-r", "n2", PY, "long.py")
    task = wait_for(lambda: proc.poll() is not None or next(
        (t for t in tasks(hosts) if t["state"] == "running" and t["where"] == "n2"), None), 60)
    assert proc.poll() is None, proc.communicate()
    try:
        hosts.partition("n1", "n2", silent=True)
        stdout, stderr = proc.communicate(timeout=60)  # without keepalives: TCP's many minutes
        assert proc.returncode == 255, stderr
        assert f"mosrun: node n2 running task {task['id']} was lost" in stderr
        guests = lambda: json.loads(hosts.run("n2", ["mosps", "--json"]).stdout)["tasks"]  # noqa: E731
        wait_for(lambda: not [t for t in guests() if t["id"] == task["id"]], 60)
    finally:
        hosts.heal()
    wait_for(hosts.converged, 90, 0.5)


@pytest.mark.parametrize("seconds", [10, 60])
def test_a_partition_between_home_and_executing_node(hosts: HostsRig, seconds: int) -> None:
    """A row of the fault table: the link between the home and the task's node goes silent for
    a while. Shorter than the keepalives' bound, nothing shows; longer, the home restarts the
    task from its checkpoint elsewhere, and the output is still a local run's."""
    from test_faults import FAULTS, FaultRow, compare

    steps = 60 + 20 * seconds  # still running when the link comes back
    hosts.put("n1", f"{HOME}/part.py", counter(steps, pause=0.05))
    expected = local_run(hosts, "part.py").stdout
    proc = mosrun(hosts, "-A", "0.5", "-r", "n2", PY, "part.py")
    task = running_on(hosts, "n2")
    wait_for(lambda: hosts.sh("n1", f"ls /tmp/mosix/state/checkpoints | grep -q '^{task['id']}\\.'")
             .returncode == 0, 30)
    try:
        hosts.partition("n1", "n2", silent=True)
        time.sleep(seconds)
    finally:
        hosts.heal()
    stdout, stderr = proc.communicate(timeout=300)
    said = [line for line in stderr.splitlines() if line.startswith("mosrun:")]
    lost, dup = compare(expected.encode(), stdout.encode())
    if seconds < 30:
        saw = "exit 0, nothing on stderr (the output pauses)"
        ok = proc.returncode == 0 and said == []
    else:
        saw = "exit 0; one line: node n2 running task … was lost; restarted on nX"
        ok = proc.returncode == 0 and len(said) == 1 and "was lost; restarted on" in said[0]
    FAULTS.append(FaultRow(f"a silent partition of {seconds} s between the home and the task's node "
                           "(separate hosts, `-A 0.5`)", 1, saw, lost, dup))
    assert ok, stderr
    assert (lost, dup) == (0, 0)
    wait_for(hosts.converged, 120, 0.5)


def test_the_balancer_spreads_busy_tasks_over_the_hosts(hosts: HostsRig) -> None:
    hosts.put("n1", f"{HOME}/busy.py", textwrap.dedent("""
        import time
        from mosrun import resumable, safepoint
        state = resumable(n=0)
        end = time.time() + 60
        while time.time() < end:
            state.n += 1
            if state.n % 10000 == 0:
                safepoint()
    """))
    procs = [mosrun(hosts, "-r", "n1", PY, "busy.py") for _ in range(4)]
    try:
        wait_for(lambda: len([t for t in tasks(hosts) if t["state"] == "running"]) == 4, 30)

        def spread() -> bool:
            where = [t["where"] for t in tasks(hosts)]
            return len(where) == 4 and max(where.count(n) for n in hosts.nodes) <= 2 and len(set(where)) >= 2

        wait_for(spread, 60, 0.5)
    finally:
        for proc in procs:
            proc.kill()
        hosts.sh("n1", "pkill -f 'mosrun -r n1' || true")
        wait_for(lambda: not tasks(hosts), 30)
