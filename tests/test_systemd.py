"""The systemd unit for real: two containers boot systemd as PID 1, and mosix is installed in
each exactly as the header of ``systemd/mosixd.service`` says, line by line.

Then an ordinary user, who can read no key, uses every command, ``systemctl stop`` is a graceful leave,
a daemon killed with SIGKILL is restarted, and a bad configuration fails once, with one clear
line in the journal. Containers, network and image are removed at the end, also after a failure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import time
from typing import Iterator

import pytest
from conftest import counter, wait_for
from containers import ROOT, Engine, Unavailable, docker_cli, run, wheelhouse

# The first test also waits for the engine, the base image and the build (minutes on a clean machine).
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1200)]

PREFIX = "mosixtest-sd"
IMAGE = f"{PREFIX}:latest"
NETWORK = PREFIX
SUBNET = "198.19.201.0/24"
NODES = ("n1", "n2")
UNIT = ROOT / "systemd" / "mosixd.service"
ALICE = 1500



def header_commands() -> list[str]:
    """The install commands of the unit's header, in order, without their comments."""
    lines = UNIT.read_text().split("[Unit]", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Install"))
    commands = []
    for line in lines[start + 1:]:
        if line.startswith("# Logs"):
            break
        if line.startswith("#   ") and not line.startswith("#   #"):
            commands.append(re.sub(r"\s+#\s.*$", "", line[4:]).strip())
    return commands


def config(node: str) -> str:
    peers = json.dumps([f"{n}:7410" for n in NODES if n != node])
    return textwrap.dedent(f"""\
        [node]
        id = "{node}"
        listen = "0.0.0.0:7410"
        advertise = "{node}:7410"
        peers = {peers}
        [tls]
        ca = "/etc/mosix/tls/ca.crt"
        cert = "/etc/mosix/tls/node.crt"
        key = "/etc/mosix/tls/node.key"
        [load]
        source = "tasks"
        """)


class Nodes:
    """Two systemd containers on a network of their own."""

    def __init__(self, engine: Engine) -> None:
        self.env = engine.env

    def name(self, node: str) -> str:
        return f"{PREFIX}-{node}"

    def sh(self, node: str, script: str, *, user: str | None = None, input: str | None = None,
           timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        flags = [*(["-u", user] if user else []), *(f"-e{k}={v}" for k, v in (env or {}).items())]
        return subprocess.run([docker_cli(), "exec", "-i", *flags, self.name(node), "sh", "-c", script],
                              input=input, capture_output=True, text=True, timeout=timeout, env=self.env)

    def ok(self, node: str, script: str, **kw: object) -> str:
        done = self.sh(node, script, **kw)  # type: ignore[arg-type]
        assert done.returncode == 0, f"{node}: {script}: {done.stderr}"
        return done.stdout

    def unit(self, node: str, prop: str) -> str:
        return self.ok(node, f"systemctl show -p {prop} --value mosixd").strip()

    def up(self) -> bool:
        done = self.sh("n1", "mosmon --json", timeout=20)
        return done.returncode == 0 and [n["state"] for n in json.loads(done.stdout)["nodes"]] == ["up", "up"]

    def journal(self, node: str) -> list[str]:
        return self.ok(node, "journalctl -u mosixd --no-pager -o cat").splitlines()


def _cleanup(env: dict[str, str]) -> None:
    names = [f"{PREFIX}-{n}" for n in NODES]
    run([docker_cli(), "rm", "-f", *names], check=False, env=env)
    run([docker_cli(), "network", "rm", NETWORK], check=False, env=env)
    run([docker_cli(), "image", "rm", "-f", IMAGE], check=False, env=env)


@pytest.fixture(scope="module")
def nodes(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    try:
        base = docker_engine.local_base()
    except Unavailable as exc:
        pytest.skip(str(exc))
    env = docker_engine.env
    context = tmp_path_factory.mktemp("systemd-image")
    shutil.copytree(wheelhouse(), context / "wheels")
    shutil.copytree(ROOT / "systemd", context / "systemd")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY wheels /wheels\nCOPY systemd /src/systemd\n")
    nodes = Nodes(docker_engine)
    try:
        run([docker_cli(), "build", "--network", "none", "-q", "-t", IMAGE, str(context)], timeout=300, env=env)
        run([docker_cli(), "network", "create", "--internal", "--subnet", SUBNET, NETWORK], env=env)
        for node in NODES:
            run([docker_cli(), "run", "-d", "--name", nodes.name(node), "--hostname", node, "--network", NETWORK,
                 "--network-alias", node, "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
                 "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                 "--cgroupns=host", "--stop-signal", "SIGRTMIN+3", IMAGE, "/lib/systemd/systemd"], env=env)
        for node in NODES:
            wait_for(lambda: nodes.sh(node, "systemctl is-system-running").stdout.strip() in ("running", "degraded"),
                     60)
            nodes.ok(node, f"useradd -m -u {ALICE} alice")
        offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}  # pip as written, from the wheelhouse
        for command in header_commands():
            for node in NODES:
                if command.startswith("$EDITOR"):
                    nodes.ok(node, "cat > /etc/mosix/mosix.toml", input=config(node))
                elif command.startswith("mosixd ca init") and node != NODES[0]:
                    # One CA for the cluster. The header issues on the CA's machine and copies
                    # the results; here each node issues its own from a copy of that CA.
                    for name in ("ca.crt", "ca.key"):
                        pem = nodes.ok(NODES[0], f"cat /root/mosix-ca/{name}")
                        nodes.ok(node, f"mkdir -p /root/mosix-ca && cat > /root/mosix-ca/{name}", input=pem)
                else:
                    nodes.ok(node, f"cd /src && {command}", env=offline, timeout=300)
        wait_for(nodes.up, 60)
        yield nodes
    finally:
        _cleanup(env)
        leftovers = run([docker_cli(), "ps", "-aq", "--filter", f"name={PREFIX}"], env=env).stdout.split()
        assert leftovers == [] and not docker_engine.has_image(IMAGE)


def test_the_unit_installed_as_its_header_says_runs_on_both_nodes(nodes: Nodes) -> None:
    for node in NODES:
        assert nodes.unit(node, "ActiveState") == "active"
        assert nodes.unit(node, "UnitFileState") == "enabled"
        assert nodes.ok(node, "stat -c '%a %U' /run/mosix/mosixd.sock /run/mosix/mosrun.sock "
                              "/etc/mosix/tls/node.key") == "666 root\n666 root\n600 root\n"


def test_an_ordinary_user_uses_every_command(nodes: Nodes) -> None:
    as_alice = {"user": "alice"}
    assert nodes.sh("n1", "cat /etc/mosix/tls/node.key", **as_alice).returncode != 0
    assert "2 nodes, 2 up" in nodes.ok("n1", "mosmon --once", **as_alice)
    status = json.loads(nodes.ok("n1", "mosctl status --json", **as_alice))
    assert status["cluster"]["up"] == 2
    nodes.ok("n1", "cat > /home/alice/job.py", input=counter(100), **as_alice)
    local = nodes.ok("n1", "cd /home/alice && /opt/mosix/bin/python job.py", **as_alice)
    job = subprocess.Popen([docker_cli(), "exec", "-u", "alice", nodes.name("n1"), "sh", "-c",
                            "cd /home/alice && mosrun -r n2 /opt/mosix/bin/python job.py"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nodes.env)
    task = wait_for(lambda: next((t for t in json.loads(nodes.ok("n1", "mosps --json", **as_alice))["tasks"]
                                  if t["where"] == "n2" and t["state"] == "running"), None), 30)
    assert task["user"] == "alice"
    moved = json.loads(nodes.ok("n1", f"migrate --json {task['id']} home", **as_alice))
    assert moved["ok"] and moved["node"] == "n1"
    stdout, stderr = job.communicate(timeout=60)
    assert (job.returncode, stdout, stderr) == (0, local, "")


def test_systemctl_stop_is_a_graceful_leave(nodes: Nodes) -> None:
    nodes.ok("n1", "cat > /home/alice/job.py", input=counter(100), user="alice")
    local = nodes.ok("n1", "cd /home/alice && /opt/mosix/bin/python job.py", user="alice")
    job = subprocess.Popen([docker_cli(), "exec", "-u", "alice", nodes.name("n1"), "sh", "-c",
                            "cd /home/alice && mosrun -r n2 /opt/mosix/bin/python job.py"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=nodes.env)
    task = wait_for(lambda: next((t for t in json.loads(nodes.ok("n1", "mosps --json"))["tasks"]
                                  if t["where"] == "n2" and t["state"] == "running"), None), 30)
    try:
        nodes.ok("n2", "systemctl stop mosixd", timeout=120)
        stdout, stderr = job.communicate(timeout=60)
        assert (job.returncode, stdout, stderr) == (0, local, "")
        assert nodes.unit("n2", "ActiveState") == "inactive"  # a clean stop, not a failure
        assert any(f"task {task['id']} moved to n1 before the node left" in line for line in nodes.journal("n2"))
    finally:
        nodes.ok("n2", "systemctl start mosixd")
        wait_for(nodes.up, 60)


def test_a_daemon_killed_with_sigkill_is_restarted(nodes: Nodes) -> None:
    before, restarts = nodes.unit("n2", "MainPID"), int(nodes.unit("n2", "NRestarts"))
    nodes.ok("n2", f"kill -9 {before}")
    wait_for(lambda: nodes.unit("n2", "ActiveState") == "active" and nodes.unit("n2", "MainPID") not in ("0", before),
             30)
    assert int(nodes.unit("n2", "NRestarts")) == restarts + 1
    wait_for(nodes.up, 60)


def test_a_bad_configuration_fails_once_with_one_clear_line(nodes: Nodes) -> None:
    good = nodes.ok("n2", "cat /etc/mosix/mosix.toml")
    try:
        nodes.ok("n2", "cat >> /etc/mosix/mosix.toml", input="colour = \"blue\"\n")
        nodes.sh("n2", "systemctl restart mosixd")  # a restart by hand counts restarts from 0
        wait_for(lambda: nodes.unit("n2", "ActiveState") == "failed", 30)
        time.sleep(7)  # longer than RestartSec: no restart comes
        assert nodes.unit("n2", "ActiveState") == "failed"
        assert nodes.unit("n2", "NRestarts") == "0"
        assert nodes.unit("n2", "ExecMainStatus") == "2"  # the documented "bad configuration"
        said = [line for line in nodes.journal("n2") if "colour" in line]
        assert len(said) == 1, said
        assert said[0].startswith("mosixd: config error: load.colour: unknown key in /etc/mosix/mosix.toml")
    finally:
        nodes.ok("n2", "cat > /etc/mosix/mosix.toml", input=good)
        nodes.ok("n2", "systemctl reset-failed mosixd; systemctl start mosixd")
        wait_for(nodes.up, 60)
