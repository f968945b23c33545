"""The fault table: each class of fault, done to real daemons, and what the user saw.

Every test here does one fault to a running task (or to many), several times, compares what
mosrun printed with what a local run prints, and adds a row: what was done, how many times,
what the user saw, lines lost, lines duplicated. The rows are printed as a table at the end of
the run (``conftest.pytest_terminal_summary``); README's Reliability section shows it. A test
fails when a line is lost or doubled, except where the row says why.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import BIN, LocalRig, counter, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow, pytest.mark.timeout(900)]

PY = sys.executable


@dataclass
class FaultRow:
    what: str
    times: int
    saw: str
    lost: int
    duplicated: int


FAULTS: list[FaultRow] = []


def compare(expected: bytes, got: bytes) -> tuple[int, int]:
    """(lines lost, lines duplicated) of ``got`` against ``expected``."""
    want, have = collections.Counter(expected.splitlines()), collections.Counter(got.splitlines())
    return sum((want - have).values()), sum((have - want).values())


def _said(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("mosrun:")]


def _tasks(rig: LocalRig, node: str = "n1") -> list[dict]:
    out = rig.tool("mosps", "--json", "--node", node)
    return json.loads(out.stdout)["tasks"] if out.returncode == 0 else []


def _running(rig: LocalRig) -> dict:
    return wait_for(lambda: next((t for t in _tasks(rig) if t["state"] == "running"), None), 30)


def _start(rig: LocalRig, cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "mosrun"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=rig.env)


_RESTARTED: dict[tuple[int, str], int] = {}  # (rig, node) -> pid of the daemon started by hand


def _pid(rig: LocalRig, node: str) -> int:
    """The pid of ``node``'s daemon now (the registry knows only the first)."""
    return _RESTARTED.get((id(rig), node), rig.node(node)["pid"])


def _restart(rig: LocalRig, node: str, converge: bool = True) -> None:
    _RESTARTED[(id(rig), node)] = rig.start_node(node).pid
    if converge:
        wait_for(rig.converged, 60)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRig]:
    rig = start_rig(3, tmp_path_factory.mktemp("faults"), "--no-balance")
    try:
        wait_for(rig.converged, 30)
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, bytes]:
    """A resumable counter of 100 lines, and what a local run prints."""
    (tmp_path / "job.py").write_text(counter(100, pause=0.05, ballast=1 << 20))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    return tmp_path, local.stdout


def test_executing_node_killed(rig: LocalRig, job: tuple[Path, bytes]) -> None:
    work, expected = job
    lost = dup = 0
    saw = set()
    for _ in range(2):
        proc = _start(rig, work, "-A", "0.5", "-r", "n2", PY, "job.py")
        task = _running(rig)
        wait_for(lambda: list((Path(rig.node("n1")["state_dir"]) / "checkpoints").glob(f"{task['id']}.*")), 20)
        os.kill(_pid(rig, "n2"), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        _restart(rig, "n2")
        assert proc.returncode == 0, stderr
        said = _said(stderr)
        assert len(said) == 1 and "was lost; restarted on" in said[0], stderr
        saw.add("exit 0; one line: node n2 running task … was lost; restarted on nX")
        lost, dup = lost + compare(expected, stdout)[0], dup + compare(expected, stdout)[1]
    FAULTS.append(FaultRow("executing node killed (kill -9), task checkpointed every 0.5 s (`-A`)", 2,
                           "; ".join(sorted(saw)), lost, dup))
    assert (lost, dup) == (0, 0)


def test_target_killed_mid_transfer(rig: LocalRig, tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(counter(100, pause=0.05, ballast=96 << 20))
    expected = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=120).stdout
    lost = dup = 0
    for _ in range(2):
        proc = _start(rig, tmp_path, "-r", "n2", PY, "job.py")
        task = _running(rig)
        time.sleep(1.0)  # its size is known: the target makes room for it
        moving = subprocess.Popen([str(BIN / "migrate"), "--json", task["id"], "n3"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=rig.env, text=True)
        wait_for(lambda: _copy_on(task["id"], "n3"), 30, 0.02)  # the target's copy waits for the state
        time.sleep(0.1)
        os.kill(_pid(rig, "n3"), signal.SIGKILL)
        out, _ = moving.communicate(timeout=120)
        assert not json.loads(out)["ok"]
        stdout, stderr = proc.communicate(timeout=120)
        _restart(rig, "n3")
        assert proc.returncode == 0 and _said(stderr) == [], stderr
        lost, dup = lost + compare(expected, stdout)[0], dup + compare(expected, stdout)[1]
    FAULTS.append(FaultRow("a move's target killed during the move (its copy waiting for or taking the "
                           "96 MB state)", 2,
                           "migrate reports the failure; the task goes on where it was, exit 0, nothing on stderr",
                           lost, dup))
    assert (lost, dup) == (0, 0)


def _copy_on(task_id: str, node: str) -> bool:
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("MOSIX_TASK_ID") == task_id and env.get("MOSIX_NODE") == node:
                return True
        except psutil.Error:
            continue
    return False


def test_home_daemon_killed_and_restarted(rig: LocalRig, job: tuple[Path, bytes]) -> None:
    work, expected = job
    lost = dup = 0
    for _ in range(2):
        proc = _start(rig, work, "-r", "n2", PY, "job.py")
        _running(rig)
        time.sleep(0.5)
        os.kill(_pid(rig, "n1"), signal.SIGKILL)
        time.sleep(1.0)
        _restart(rig, "n1", converge=False)
        stdout, stderr = proc.communicate(timeout=120)
        wait_for(rig.converged, 60)
        assert proc.returncode == 0, stderr
        said = _said(stderr)
        assert len(said) == 2 and "went away" in said[0] and "is back" in said[1], stderr
        lost, dup = lost + compare(expected, stdout)[0], dup + compare(expected, stdout)[1]
    FAULTS.append(FaultRow("home daemon killed (kill -9) and started again 1 s later", 2,
                           "exit 0; two lines: the home daemon went away …, … is back", lost, dup))
    assert (lost, dup) == (0, 0)


def test_executing_node_frozen_ten_seconds(rig: LocalRig, job: tuple[Path, bytes]) -> None:
    work, expected = job
    lost = dup = 0
    for _ in range(1):
        proc = _start(rig, work, "-r", "n2", PY, "job.py")
        _running(rig)
        daemon = psutil.Process(_pid(rig, "n2"))
        frozen = [daemon, *daemon.children(recursive=True)]
        for p in frozen:
            p.send_signal(signal.SIGSTOP)
        time.sleep(10)
        for p in frozen:
            p.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and _said(stderr) == [], stderr
        lost, dup = lost + compare(expected, stdout)[0], dup + compare(expected, stdout)[1]
    wait_for(rig.converged, 60)
    FAULTS.append(FaultRow("executing node frozen 10 s (SIGSTOP of its daemon and task, then SIGCONT)", 1,
                           "exit 0, nothing on stderr (the output pauses)", lost, dup))
    assert (lost, dup) == (0, 0)


def test_disk_full_at_home_while_checkpointing(rig: LocalRig, tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(counter(60, pause=0.05, ballast=4 << 20))
    expected = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60).stdout
    checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
    checkpoints.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(checkpoints)], check=True)
    lost = dup = 0
    try:
        for _ in range(1):
            proc = _start(rig, tmp_path, "-A", "0.3", "-r", "n2", PY, "job.py")
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            said = _said(stderr)
            assert len(said) == 1 and "could not be kept at home (No space left on device)" in said[0], stderr
            lost, dup = lost + compare(expected, stdout)[0], dup + compare(expected, stdout)[1]
    finally:
        subprocess.run(["umount", str(checkpoints)], check=False)
    FAULTS.append(FaultRow("disk full at home while checkpointing (`-A`, a 2 MB file system for a 4 MB state)", 1,
                           "exit 0; one line: its checkpoint could not be kept at home (No space left on device); "
                           "it runs on", lost, dup))
    assert (lost, dup) == (0, 0)


# A driver run as a user inside a mount namespace of its own, where the interpreter's
# directory is reachable by that user (here it lives under root's home): it starts its share
# of mosruns at once and reports what each printed.
DRIVER = """
import json, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
job = json.loads(sys.argv[1])
def one(i):
    out = subprocess.run([job["mosrun"], "--node", job["node"], "sh", "-c", f"echo {job['user']} task {i}; id -u"],
                         capture_output=True, cwd=job["cwd"], timeout=300)
    return [out.returncode, out.stdout.decode(), out.stderr.decode()]
with ThreadPoolExecutor(job["count"]) as pool:
    print(json.dumps(list(pool.map(one, range(job["count"])))))
"""


def _as_user_in_namespace(user: str, uid: int, gid: int, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    prefix = str(Path(sys.base_prefix).parent)  # the interpreter's home, perhaps under /root
    script = textwrap.dedent(f"""
        set -e
        mount --make-rprivate /
        keep=$(mktemp -d)
        mount --bind {prefix} "$keep"
        mount -t tmpfs -o mode=0755 tmpfs /root
        mkdir -p {prefix}
        mount --bind "$keep" {prefix}
        exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@"
    """)
    return subprocess.Popen(["unshare", "-m", "sh", "-c", script, "sh", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def four_users() -> Iterator[list[tuple[str, int, int]]]:
    """Four throw-away users, made for this test and removed after it."""
    made: list[tuple[str, int, int]] = []
    try:
        for i in range(4):
            name = f"mxf{os.getpid() % 10000}u{i}"
            done = subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                                   name], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            import pwd

            entry = pwd.getpwnam(name)
            made.append((name, entry.pw_uid, entry.pw_gid))
        yield made
    finally:
        for name, _, _ in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


def test_five_hundred_short_tasks_from_four_users_at_once(rig: LocalRig, four_users: list[tuple[str, int, int]]) -> None:
    if not Path(sys.base_prefix).parent.is_dir():
        pytest.skip("the interpreter's directory is not where this test expects it")
    for d in [rig.runtime, *rig.runtime.parents, *[Path(rig.node(n)["socket"]).parent for n in ("n1", "n2", "n3")]]:
        if d != Path("/"):
            d.chmod(d.stat().st_mode | 0o001)  # other users may reach the sockets, nothing more
    drivers = []
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)
        for name, uid, gid in four_users:
            home = Path(scratch) / name
            home.mkdir()
            os.chown(home, uid, gid)
            job = {"mosrun": str(BIN / "mosrun"), "node": rig.node("n1")["session"], "user": name, "count": 125,
                   "cwd": str(home)}
            env = {"PATH": os.environ["PATH"], "HOME": str(home)}
            drivers.append((name, uid, _as_user_in_namespace(name, uid, gid, [PY, "-c", DRIVER, json.dumps(job)], env)))
        results = {}
        for name, uid, driver in drivers:
            out, err = driver.communicate(timeout=600)
            assert driver.returncode == 0, err
            results[name] = (uid, json.loads(out))
    lost = dup = 0
    failed = []
    for name, (uid, runs) in results.items():
        expected = b"".join(f"{name} task {i}\n{uid}\n".encode() for i in range(125))
        got = "".join(stdout for _, stdout, _ in runs).encode()
        lost, dup = lost + compare(expected, got)[0], dup + compare(expected, got)[1]
        failed += [(code, err) for code, _, err in runs if code != 0 or err]
    FAULTS.append(FaultRow("500 short tasks (`sh -c`), from 4 users at once", 1,
                           f"{500 - len(failed)} of 500 exit 0, each as its user", lost, dup))
    assert failed == [] and (lost, dup) == (0, 0)


def test_sixteen_tasks_printing_a_hundred_megabytes_each(rig: LocalRig, tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text(textwrap.dedent("""
        import sys
        i = int(sys.argv[1])
        line = (f"{i:02d} " + "x" * 96 + "\\n").encode()
        out = sys.stdout.buffer
        for n in range(1_000_000):
            out.write(line)
    """))
    expected = {i: hashlib.sha256(f"{i:02d} {'x' * 96}\n".encode() * 1_000_000).hexdigest() for i in range(16)}

    def one(i: int) -> tuple[int, str, int]:
        proc = _start(rig, tmp_path, PY, "big.py", str(i))
        digest, size = hashlib.sha256(), 0
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        proc.wait(timeout=600)
        return proc.returncode, digest.hexdigest(), size

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    wrong = [i for i, (code, digest, _) in enumerate(results) if code != 0 or digest != expected[i]]
    size = 100 * 1_000_000
    lost = sum(max(0, size - results[i][2]) for i in wrong) // 100  # lines of 100 bytes
    dup = sum(max(0, results[i][2] - size) for i in wrong) // 100
    FAULTS.append(FaultRow("16 tasks at once, each printing 100 MB to stdout", 1,
                           f"{16 - len(wrong)} of 16 exit 0 with the exact bytes (SHA-256)", lost, dup))
    assert wrong == [], [(i, results[i][0], results[i][2]) for i in wrong]
