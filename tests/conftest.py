"""Shared fixtures: the multi-process rig (``mosixd --local N`` on 127.0.1.x)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from containers import Engine

BIN = Path(sys.executable).parent


COUNTER = """\
import time
from mosrun import resumable, safepoint

print("starting", flush=True)
state = resumable(step=0, total=0, ballast=b"")
state.ballast = state.ballast or bytes({ballast})
while state.step < {steps}:
    state.total += state.step * state.step
    print("step", state.step, state.total, flush=True)
    state.step += 1
    time.sleep({pause})
    safepoint()
print("done", state.total, len(state.ballast))
"""


def counter(steps: int, pause: float = 0.05, ballast: int = 0) -> str:
    """A resumable job that counts ``steps`` and prints a line a step, with ``ballast`` bytes of
    state; it ends with ``done_line(steps, ballast)``."""
    return COUNTER.format(steps=steps, pause=pause, ballast=ballast)


def done_line(steps: int, ballast: int = 0) -> str:
    return f"done {sum(i * i for i in range(steps))} {ballast}"


def free_port(hosts: list[str], tries: int = 50) -> int:
    """A port that is free on every one of ``hosts``."""
    rng = random.Random()
    for _ in range(tries):
        port = rng.randrange(20000, 60000)
        ok = True
        for host in hosts:
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port found")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class LocalRig:
    """A running ``mosixd --local N`` with helpers to run the client tools against it."""

    n: int
    port: int
    runtime: Path
    proc: subprocess.Popen[bytes]
    log: Path
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MOSIX_RUNTIME_DIR"] = str(self.runtime)
        env.pop("MOSIX_NODE", None)
        env.pop("MOSIX_KEY_FILE", None)
        return env

    def registry(self) -> dict[str, Any]:
        return json.loads((self.runtime / "local.json").read_text())

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.registry()["nodes"] if n["id"] == node_id)

    def tool(self, *args: str, timeout: float = 20.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a console script (mosmon, mosctl, mosixd, ...) of this install."""
        return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, env=env or self.env)

    def mosrun(self, *args: str, cwd: Path | None = None, input: bytes | None = None,
               timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        """Run mosrun (bytes in, bytes out) against this cluster."""
        return subprocess.run([str(BIN / "mosrun"), *args], capture_output=True, cwd=cwd, input=input,
                              timeout=timeout, env=self.env)

    def tasks(self, node_id: str = "n1") -> list[dict[str, Any]]:
        out = self.tool("mosps", "--json", "--node", node_id)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["tasks"]

    def view(self, node_id: str) -> dict[str, str] | None:
        """node id -> state as ``node_id`` sees it (None if it does not answer)."""
        out = self.tool("mosmon", "--json", "--node", node_id, timeout=10)
        if out.returncode != 0:
            return None
        return {n["id"]: n["state"] for n in json.loads(out.stdout)["nodes"]}

    def converged(self, ids: list[str] | None = None, expect: dict[str, str] | None = None) -> bool:
        ids = ids or [f"n{i}" for i in range(1, self.n + 1)]
        expect = expect or {i: "up" for i in ids}
        return all(self.view(i) is not None and all(self.view(i).get(k) == v for k, v in expect.items())  # type: ignore[union-attr]
                   for i in ids)

    def start_node(self, node_id: str) -> subprocess.Popen[bytes]:
        """(Re)start one node by hand from its config file, as an administrator would."""
        proc = subprocess.Popen([str(BIN / "mosixd"), "--config", self.node(node_id)["config"]],
                                stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        self.extra_procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [self.proc, *self.extra_procs]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.proc, *self.extra_procs]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def with_hosts_file(hosts_file: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a mount namespace of its own where ``hosts_file`` is /etc/hosts: names
    the test makes up resolve for that process and its children, and the host is untouched."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *argv]


def can_mount_namespaces() -> str | None:
    """Why a test cannot give a process its own /etc/hosts here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    return None


def start_rig(n: int, tmp: Path, *extra: str, hosts_file: Path | None = None) -> LocalRig:
    """``mosixd --local n`` with ``extra`` flags; with a ``hosts_file``, in its own mount
    namespace where that file is /etc/hosts (see :func:`with_hosts_file`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    runtime = tmp / "runtime"
    hosts = [f"127.0.1.{i}" for i in range(1, n + 1)]
    port = free_port(hosts)
    log = tmp / "cluster.log"
    env = dict(os.environ, MOSIX_RUNTIME_DIR=str(runtime))
    argv = [str(BIN / "mosixd"), "--local", str(n), "--port", str(port), *extra]
    if hosts_file is not None:
        argv = with_hosts_file(hosts_file, argv)  # unshare and sh exec: the pid is mosixd's
    proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    rig = LocalRig(n=n, port=port, runtime=runtime, proc=proc, log=log)
    try:
        wait_for(lambda: (runtime / "local.json").exists() or proc.poll() is not None, 20)
        if proc.poll() is not None:
            raise RuntimeError(f"mosixd --local exited: {log.read_text()}")
    except BaseException:
        rig.stop()
        raise
    return rig


@pytest.fixture(scope="module")
def shared_rig3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRig]:
    """A 3-node local cluster shared by the tests of one module (they must leave it as found)."""
    rig = start_rig(3, tmp_path_factory.mktemp("rig"))
    try:
        wait_for(rig.converged, 30)
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def rig3(tmp_path: Path) -> Iterator[LocalRig]:
    """A fresh 3-node local cluster, converged."""
    rig = start_rig(3, tmp_path)
    try:
        wait_for(rig.converged, 30)
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Engine"]:
    """A Docker engine for the compose and systemd suites (see tests/containers.py): started for
    the session if none runs, and stopped after it; the suites skip, saying why, where it cannot
    run."""
    from containers import Engine, Unavailable

    engine = Engine(tmp_path_factory.mktemp("docker"))
    try:
        engine.start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield engine
    finally:
        engine.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault table (tests/test_faults.py and the separate-hosts rows), when any ran."""
    faults = sys.modules.get("test_faults")
    rows = getattr(faults, "FAULTS", [])
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("fault table (README, Reliability):")
    write("| what was done | times | what the user saw | lines lost | lines duplicated |")
    write("|---|---|---|---|---|")
    for row in rows:
        write(f"| {row.what} | {row.times} | {row.saw} | {row.lost} | {row.duplicated} |")
