"""The compose rig against the local rig, in the same run: what separate containers cost.

Three figures, each on ``mosixd --local 3`` (one host, nodes on 127.0.1.x) and on
``docker-compose.yml`` (three containers, each with its own disk and network stack, known by
name), medians of ``--repeat`` runs:

  launch      ``mosrun -r n2 python -c pass`` from n1, timed on n1, beside ``python -c pass``
  move        the freeze of a move of a task with 64 MB of state from n2 to n3
  leave       from the stop of the node running a resumable task (SIGTERM to its daemon;
              ``docker-compose stop n2``) to the task running on another node

Needs root and Docker, as the compose suite (``tests/containers.py`` brings the engine up).

    python -m bench.compose [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from bench.localcluster import LocalCluster
from tests.containers import Compose, Engine, wheelhouse

BIN = Path(sys.executable).parent

TIMER = """
import json, statistics, subprocess, sys, time
def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start
runs = int(sys.argv[1])
base = [timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
launch = [timed(["mosrun", "-r", "n2", sys.executable, "-c", "pass"]) for _ in range(runs)]
print(json.dumps({"base": statistics.median(base), "launch": statistics.median(launch)}))
"""

JOB = """
import time
from mosrun import resumable, safepoint
state = resumable(step=0, blob=None)
if state.blob is None:
    state.blob = bytearray({size})
while state.step < {steps}:
    state.step += 1
    time.sleep(0.02)
    safepoint()
"""


ENDER = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\\0")
        if any(w.endswith(b"mosrun") for w in words) and b"job.py" in words:
            os.kill(int(pid), signal.SIGTERM)
    except OSError:
        pass
"""


class Rig(Protocol):
    """What the figures need of a cluster: a shell on n1 (the home), and stopping n2."""

    name: str

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]: ...

    def background(self, script: str) -> subprocess.Popen[str]: ...

    def stop_n2(self) -> Callable[[], None]: ...

    def start_n2(self) -> None: ...


class LocalRig:
    name = "local rig"

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.env = dict(cluster.env, PATH=f"{BIN}:{os.environ['PATH']}")
        self.restarted: list[subprocess.Popen[bytes]] = []

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", script], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def background(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["sh", "-c", script], cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def _node(self, node: str) -> dict[str, Any]:
        registry = json.loads((Path(self.env["MOSIX_RUNTIME_DIR"]) / "local.json").read_text())
        return next(n for n in registry["nodes"] if n["id"] == node)

    def stop_n2(self) -> Callable[[], None]:
        pid = self.restarted.pop().pid if self.restarted else self._node("n2")["pid"]
        os.kill(pid, signal.SIGTERM)
        return lambda: None

    def start_n2(self) -> None:
        self.restarted.append(subprocess.Popen([str(BIN / "mosixd"), "--config", self._node("n2")["config"]],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        for proc in self.restarted:
            proc.terminate()
            proc.wait(timeout=90)


class ComposeRig:
    name = "compose rig"

    def __init__(self, compose: Compose) -> None:
        self.compose = compose

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.compose.sh("n1", f"mkdir -p /work && cd /work && {script}", timeout=timeout)

    def background(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.compose.argv("n1", "sh", "-c", f"cd /work && {script}"), env=self.compose.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop_n2(self) -> Callable[[], None]:
        proc = subprocess.Popen(["docker-compose", "-p", "mosixtest", *self.compose.files, "stop", "n2"],
                                env=self.compose.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return lambda: proc.wait(timeout=120)

    def start_n2(self) -> None:
        self.compose("start", "n2")


def end_jobs(rig: Rig) -> None:
    """End the benchmark's mosruns (where they run: killing a docker exec client would not)."""
    write(rig, "end.py", ENDER)
    rig.sh("python end.py")
    poll(lambda: not tasks(rig), 30)


def tasks(rig: Rig) -> list[dict[str, Any]]:
    done = rig.sh("mosps --json", timeout=30)
    return json.loads(done.stdout)["tasks"] if done.returncode == 0 else []


def poll(what: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(every)
    raise RuntimeError(f"gave up after {timeout:g} s")


def all_up(rig: Rig) -> bool:
    done = rig.sh("mosmon --json", timeout=30)
    return done.returncode == 0 and [n["state"] for n in json.loads(done.stdout)["nodes"]] == ["up"] * 3


def write(rig: Rig, name: str, text: str) -> None:
    done = rig.sh(f"cat > {name} << 'EOF'\n{textwrap.dedent(text)}\nEOF")
    if done.returncode:
        raise RuntimeError(done.stderr)


def launch(rig: Rig, runs: int) -> dict[str, float]:
    write(rig, "timer.py", TIMER)
    done = rig.sh(f"python timer.py {runs}")
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)


def running_on(rig: Rig, node: str) -> dict[str, Any]:
    return poll(lambda: next((t for t in tasks(rig) if t["state"] == "running" and t["where"] == node), None), 30)


def move(rig: Rig, runs: int) -> float:
    write(rig, "job.py", JOB.format(size=64 << 20, steps=100000))
    rig.background("exec mosrun -r n2 python job.py")
    task = running_on(rig, "n2")
    time.sleep(3)  # a usage report tells the home the task's size, as in bench.migration
    freezes, where = [], "n2"
    for _ in range(runs):
        where = "n3" if where == "n2" else "n2"
        reply = json.loads(rig.sh(f"migrate --json {task['id']} {where}").stdout)
        if not reply["ok"]:
            raise RuntimeError(reply["message"])
        freezes.append(reply["freeze_seconds"])
    end_jobs(rig)
    return statistics.median(freezes)


def leave(rig: Rig, runs: int) -> float:
    write(rig, "job.py", JOB.format(size=1 << 20, steps=100000))
    seconds = []
    for _ in range(runs):
        rig.background("exec mosrun -r n2 python job.py")
        task = running_on(rig, "n2")
        start = time.monotonic()
        finish = rig.stop_n2()
        poll(lambda: any(t["id"] == task["id"] and t["where"] not in ("n2", "") for t in tasks(rig)), 120)
        seconds.append(time.monotonic() - start)
        finish()
        end_jobs(rig)
        rig.start_n2()
        poll(lambda: all_up(rig), 60, every=0.5)
    return statistics.median(seconds)


def measure(rig: Rig, runs: int) -> dict[str, float]:
    figures = launch(rig, runs)
    figures["move"] = move(rig, runs)
    figures["leave"] = leave(rig, max(3, runs // 2))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with LocalCluster(3, Path(tmp) / "runtime", "--no-balance") as cluster:
            local = LocalRig(cluster, Path(tmp))
            try:
                results[local.name] = measure(local, args.repeat)
            finally:
                local.close()
        engine = Engine(Path(tmp) / "docker")
        engine.start()
        try:
            base = engine.base_image()
            wheelhouse()
            compose = Compose(engine, Path(tmp), base)
            try:
                compose("up", "-d", "--build", timeout=900)
                rig = ComposeRig(compose)
                poll(lambda: all_up(rig), 60, every=0.5)
                results[rig.name] = measure(rig, args.repeat)
            finally:
                compose("down", "--volumes", "--rmi", "local", "--remove-orphans", check=False)
        finally:
            engine.stop()
    local, boxed = results["local rig"], results["compose rig"]
    print(f"medians of {args.repeat} (leave: of {max(3, args.repeat // 2)})")
    print(f"  {'figure':<44} {'local rig':>10} {'compose':>10} {'ratio':>7}")
    rows = [("python -c pass on n1 (ms)", "base", 1e3), ("launch: mosrun -r n2 python -c pass (ms)", "launch", 1e3),
            ("move of 64 MB n2 -> n3: freeze (ms)", "move", 1e3), ("stop of n2 -> running elsewhere (s)", "leave", 1)]
    for label, key, scale in rows:
        print(f"  {label:<44} {local[key] * scale:>10.1f} {boxed[key] * scale:>10.1f} {boxed[key] / local[key]:>6.2f}x")
    print(f"  launch vs python start: local {local['launch'] / local['base']:.2f}x, "
          f"compose {boxed['launch'] / boxed['base']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
