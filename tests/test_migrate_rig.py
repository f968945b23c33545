"""Moving running Python tasks between nodes of the rig with ``migrate``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from conftest import BIN, LocalRig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]

PY = sys.executable

COUNTER = """
    import sys, time
    from mosrun import resumable, safepoint

    print("starting", flush=True)
    state = resumable(step=0, total=0, log=[])
    while state.step < {steps}:
        state.total += state.step * state.step
        state.log.append(state.step)
        print("step", state.step, "total", state.total, flush=(state.step % 2 == 0))
        if state.step % 7 == 0:
            print("note", state.step, file=sys.stderr, flush=True)
        state.step += 1
        time.sleep({pause})
        safepoint()
    print("done", state.total, sum(state.log))
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def start(rig: LocalRig, cwd: Path, *args: str, node: str = "n2") -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "mosrun"), "-r", node, PY, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=rig.env)


def running_task(rig: LocalRig) -> dict:
    return wait_for(lambda: next((t for t in rig.tasks("n1") if t["state"] == "running"), None), 15)


def target_copy_holding(task_id: str, node: str, rss: int) -> bool:
    """Whether the copy of ``task_id`` that ``node`` started holds more than ``rss`` bytes."""
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("MOSIX_TASK_ID") == task_id and env.get("MOSIX_NODE") == node:
                return proc.memory_info().rss > rss
        except psutil.Error:
            continue
    return False


def migrate(rig: LocalRig, task_id: str, where: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return rig.tool("migrate", "--json", task_id, where, timeout=timeout)


def test_a_task_moved_mid_run_prints_what_a_local_run_prints(shared_rig3: LocalRig, tmp_path: Path) -> None:
    # Long enough to be still running when the move lands, on a busy machine too.
    write(tmp_path / "job.py", COUNTER.format(steps=100, pause=0.05))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    time.sleep(0.5)
    out = migrate(shared_rig3, task["id"], "n3")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"], out.stderr
    assert result["node"] == "n3" and result["state_bytes"] > 0
    assert 0 < result["transfer_seconds"] <= result["freeze_seconds"]
    assert wait_for(lambda: [t["where"] for t in shared_rig3.tasks("n1")] in (["n3"], []), 10)
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)


def test_ten_moves_in_a_row(shared_rig3: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", COUNTER.format(steps=160, pause=0.05))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    where = "n2"
    for i in range(10):
        where = {"n1": "n2", "n2": "n3", "n3": "n1"}[where]
        result = json.loads(migrate(shared_rig3, task["id"], where).stdout)
        assert result["ok"] and result["node"] == where, (i, result)
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)


def test_a_task_loads_neither_grpc_nor_the_daemon_before_or_after_a_move(shared_rig3: LocalRig,
                                                                        tmp_path: Path) -> None:
    # The task runtime is the bottom layer: standard library only, so a task starts fast.
    write(tmp_path / "job.py", """
        import os, sys, time
        from mosrun import resumable, safepoint

        def heavy():
            tops = {m.split(".")[0] for m in sys.modules}
            return sorted(tops & {"grpc", "google", "psutil", "mosixd"}) + sorted(
                m for m in sys.modules if m.startswith("mosrun.commands"))

        print("start", os.environ["MOSIX_NODE"], heavy(), flush=True)
        state = resumable(step=0)
        while state.step < 100:
            state.step += 1
            time.sleep(0.05)
            safepoint()
        print("end", os.environ["MOSIX_NODE"], heavy(), "checkpoint" in sys.modules["mosrun.runtime"].__dict__)
    """)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    result = json.loads(migrate(shared_rig3, task["id"], "n3").stdout)
    assert result["ok"], result
    stdout, stderr = proc.communicate(timeout=60)
    # The restored copy on n3 loaded the checkpoint code, and still nothing of gRPC.
    assert (stdout, proc.returncode) == (b"start n2 []\nend n3 [] True\n", 0), stderr


def test_a_big_state_streams_while_the_task_runs_and_arrives_exact(shared_rig3: LocalRig, tmp_path: Path) -> None:
    # 48 MB of state, a MB of it rewritten at every step: pre-copied, then the changes at the freeze.
    write(tmp_path / "job.py", """
        import time, zlib
        from mosrun import resumable, safepoint

        state = resumable(step=0, blob=None)
        if state.blob is None:
            state.blob = bytearray(48 << 20)
        while state.step < 150:
            at = (state.step * 7 % 48) << 20
            state.blob[at:at + (1 << 20)] = bytes([state.step % 256]) * (1 << 20)
            state.step += 1
            if state.step % 10 == 0:
                print("step", state.step, zlib.crc32(state.blob), flush=True)
            time.sleep(0.02)
            safepoint()
        print("done", zlib.crc32(state.blob))
    """)
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    time.sleep(1.0)  # a usage report tells the home how big it is
    out = migrate(shared_rig3, task["id"], "n3")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"], out.stdout + out.stderr
    assert result["precopy_rounds"] >= 1 and result["precopy_bytes"] >= 48 << 20
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)


def test_unpicklable_state_refuses_the_move_and_the_task_goes_on(shared_rig3: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", """
        import socket, time
        from mosrun import resumable, safepoint

        state = resumable(step=0, conn=None)
        state.conn = socket.socket()
        while state.step < 100:  # long enough to be still running when the move is asked for
            state.step += 1
            time.sleep(0.05)
            safepoint()
        print("finished", state.step)
    """)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    out = migrate(shared_rig3, task["id"], "n3")
    result = json.loads(out.stdout)
    assert out.returncode == 1 and not result["ok"]
    assert "state.conn" in result["message"] and "socket" in result["message"]
    assert result["node"] == "n2"
    stdout, _ = proc.communicate(timeout=60)
    assert (stdout, proc.returncode) == (b"finished 100\n", 0)


def test_killing_the_target_during_the_transfer_leaves_the_task_on_the_source(tmp_path: Path) -> None:
    from conftest import start_rig

    rig = start_rig(3, tmp_path / "rig")
    try:
        wait_for(rig.converged, 30)
        work = tmp_path / "work"
        work.mkdir()
        write(work / "big.py", """
            import hashlib, time
            from mosrun import resumable, safepoint

            state = resumable(step=0, blob=None)
            if state.blob is None:
                state.blob = bytearray(hashlib.sha256(b"x").digest() * (12 << 20 >> 5) * 32)
            while state.step < 60:
                state.step += 1
                time.sleep(0.1)
                safepoint()
            print("finished", state.step, len(state.blob), hashlib.sha256(state.blob).hexdigest()[:12])
        """)
        local = subprocess.run([PY, "big.py"], cwd=work, capture_output=True, timeout=120)
        proc = start(rig, work, "big.py")
        task = running_task(rig)
        mover = subprocess.Popen([str(BIN / "migrate"), "--json", task["id"], "n3"], stdout=subprocess.PIPE,
                                 env=rig.env)
        # Kill the target node while the checkpoint (hundreds of MB) streams into the
        # interpreter it started for the task: once that one holds more than 64 MB.
        wait_for(lambda: target_copy_holding(task["id"], "n3", 64 << 20), 60, interval=0.005)
        os.kill(rig.node("n3")["pid"], signal.SIGKILL)
        out, _ = mover.communicate(timeout=120)
        result = json.loads(out)
        assert not result["ok"] and result["node"] == "n2", result
        stdout, _ = proc.communicate(timeout=120)
        assert (stdout, proc.returncode) == (local.stdout, 0)
    finally:
        rig.stop()


def test_a_task_without_safe_points_cannot_move(shared_rig3: LocalRig, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", "sleep", "20"], env=shared_rig3.env)
    try:
        task = running_task(shared_rig3)
        out = migrate(shared_rig3, task["id"], "n3")
        assert out.returncode == 1
        assert "cannot move: it has no safe points" in json.loads(out.stdout)["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_only_the_owner_may_move_a_task(shared_rig3: LocalRig, tmp_path: Path) -> None:
    import grpc

    from mosixd.wire import mosix_pb2 as pb
    from mosixd.wire import mosix_pb2_grpc as rpc
    from mosixd.wire.auth import open_channel
    from mosixd.wire.tls import TlsFiles, load

    write(tmp_path / "job.py", COUNTER.format(steps=40, pause=0.05))
    proc = start(shared_rig3, tmp_path, "job.py")
    try:
        task = running_task(shared_rig3)
        # Even a node (here with n1's certificate) vouching for another uid may not move it.
        tls = load(TlsFiles(*(Path(shared_rig3.registry()["tls"][k]) for k in ("ca", "cert", "key"))))
        with open_channel(shared_rig3.node("n1")["address"], None, tls=tls, expect="n1") as channel:
            reply = rpc.AdminStub(channel).Migrate(
                pb.MigrateRequest(task_id=task["id"], target="n3", uid=os.getuid() + 4242), timeout=30)
        assert not reply.ok and "only the owner" in reply.message
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    del grpc


BUSY = """
    import time
    from mosrun import resumable, safepoint

    state = resumable(done=0)
    end = time.time() + {seconds}
    while time.time() < end:
        for _ in range(20000):
            state.done += 1
        safepoint()
    print("done")
"""


@contextlib.contextmanager
def busy_two_nodes(tmp_path: Path, seconds: int) -> Iterator[tuple[LocalRig, Path, list[subprocess.Popen[bytes]]]]:
    """A 2-node rig of one CPU each, a work directory holding busy.py, and a list for the
    task processes, which are ended (before the rig) however the test goes."""
    from conftest import start_rig

    rig = start_rig(2, tmp_path / "rig", "--cpus", "1")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(rig.converged, 30)
        work = tmp_path / "work"
        work.mkdir()
        write(work / "busy.py", BUSY.format(seconds=seconds))
        yield rig, work, procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        rig.stop()


def test_the_balancer_spreads_four_tasks_from_one_node_to_two_and_two(tmp_path: Path) -> None:
    with busy_two_nodes(tmp_path, 120) as (rig, work, procs):
        procs += [start(rig, work, "busy.py", node="n1") for _ in range(4)]
        wait_for(lambda: len([t for t in rig.tasks("n1") if t["state"] == "running"]) == 4, 20)

        def spread() -> list[str]:
            where = sorted(t["where"] for t in rig.tasks("n1"))
            return where if where == ["n1", "n1", "n2", "n2"] else []

        wait_for(spread, 60, 0.5)
        time.sleep(5)  # and it stays so: no ping-pong
        assert spread()


def test_locked_tasks_are_left_alone_by_the_balancer(tmp_path: Path) -> None:
    with busy_two_nodes(tmp_path, 60) as (rig, work, procs):
        procs += [subprocess.Popen([str(BIN / "mosrun"), "-L", "-r", "n1", PY, "busy.py"], cwd=work, env=rig.env,
                                   stdout=subprocess.DEVNULL) for _ in range(3)]
        wait_for(lambda: len([t for t in rig.tasks("n1") if t["state"] == "running"]) == 3, 20)
        time.sleep(12)
        assert [t["where"] for t in rig.tasks("n1")] == ["n1"] * 3


def test_expel_empties_a_node_and_bring_calls_tasks_home(tmp_path: Path) -> None:
    from conftest import start_rig

    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(rig.converged, 30)
        work = tmp_path / "work"
        work.mkdir()
        write(work / "job.py", COUNTER.format(steps=300, pause=0.05))
        procs = [start(rig, work, "job.py", node="n2") for _ in range(2)]
        wait_for(lambda: len([t for t in rig.tasks("n2") if t["where"] == "n2"]) == 2, 20)
        out = rig.tool("mosctl", "--node", "n2", "expel", timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("moved from n2 to") == 2
        assert not rig.tasks("n2"), "no guest left on n2"
        assert rig.view("n1")["n2"] in ("blocked", "up")
        wait_for(lambda: rig.view("n1")["n2"] == "blocked", 10)
        out = rig.tool("mosctl", "--node", "n1", "bring", timeout=120)
        assert out.returncode == 0, out.stderr
        assert sorted(t["where"] for t in rig.tasks("n1")) == ["n1", "n1"]
        local = subprocess.run([PY, "job.py"], cwd=work, capture_output=True, timeout=60)
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, 0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        rig.stop()


def test_with_checkpoints_a_task_survives_the_death_of_its_node(tmp_path: Path) -> None:
    from conftest import start_rig

    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        work = tmp_path / "work"
        work.mkdir()
        write(work / "job.py", COUNTER.format(steps=80, pause=0.05))
        local = subprocess.run([PY, "job.py"], cwd=work, capture_output=True, timeout=60)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-A", "0.5", "-r", "n2", PY, "job.py"], cwd=work,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        running_task(rig)
        checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
        wait_for(lambda: list(checkpoints.glob("*.ckpt")), 20)
        time.sleep(1.0)
        os.kill(rig.node("n2")["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        notices = [line for line in stderr.decode().splitlines() if line.startswith("mosrun:")]
        assert len(notices) == 1 and "node n2 running task" in notices[0] and "restarted on n" in notices[0]
        # Exactly once: what the copy from the checkpoint prints again was shown already.
        assert stdout == local.stdout
        assert [line for line in stderr.decode().splitlines() if not line.startswith("mosrun:")] == \
            local.stderr.decode().splitlines()
        # Stored checkpoints are removed when the task ends (just after mosrun has its status).
        wait_for(lambda: not list(checkpoints.glob("*.ckpt")), 10)
    finally:
        rig.stop()


def test_without_checkpoints_the_loss_is_reported(tmp_path: Path) -> None:
    from conftest import start_rig

    rig = start_rig(2, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        write(tmp_path / "job.py", COUNTER.format(steps=200, pause=0.05))
        proc = start(rig, tmp_path, "job.py")
        running_task(rig)
        os.kill(rig.node("n2")["pid"], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 255
        assert stderr.decode().splitlines()[-1].startswith("mosrun: node n2 running task n1.")
    finally:
        rig.stop()


STDIN_SUM = """
    import sys, zlib
    from mosrun import resumable, safepoint

    state = resumable(lines=0, total=0, crc=0)
    for line in sys.stdin:
        state.lines += 1
        state.total += int(line)
        state.crc = zlib.crc32(line.encode(), state.crc)
        if state.lines % 50 == 0:
            safepoint()
    print(state.lines, state.total, state.crc)
"""


def test_stdin_from_a_pipe_follows_a_task_moved_three_times(shared_rig3: LocalRig, tmp_path: Path) -> None:
    """10 MB through a pipe; the task is moved three times as it reads, and neither the bytes
    in its pipe nor those on their way to it at each move are lost or read twice."""
    import threading

    write(tmp_path / "job.py", STDIN_SUM)
    payload = b"".join(b"%d\n" % i for i in range(1_500_000))
    assert len(payload) >= 10 << 20
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, input=payload, capture_output=True, timeout=120)
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", PY, "job.py"], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared_rig3.env)
    moved = threading.Event()
    step = 64 * 1024

    def feed() -> None:  # steadily, until the three moves are done; then the rest at once
        assert proc.stdin is not None
        with proc.stdin:
            for start in range(0, len(payload), step):
                proc.stdin.write(payload[start:start + step])
                proc.stdin.flush()
                if not moved.is_set():
                    time.sleep(0.03)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        task = running_task(shared_rig3)
        for where in ("n3", "n1", "n2"):
            time.sleep(0.3)
            result = json.loads(migrate(shared_rig3, task["id"], where).stdout)
            assert result["ok"] and result["node"] == where, result
    finally:
        moved.set()
        feeder.join(timeout=120)
    proc.stdin = None  # the feeder closed it
    stdout, stderr = proc.communicate(timeout=180)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, 0)


def test_a_restarted_task_that_is_not_deterministic_is_told_once(tmp_path: Path) -> None:
    from conftest import start_rig

    rig = start_rig(3, tmp_path / "rig", "--no-balance")
    try:
        wait_for(rig.converged, 30)
        write(tmp_path / "job.py", """
            import random, time
            from mosrun import resumable, safepoint
            state = resumable(step=0)
            while state.step < 80:
                print(state.step, f"{random.random():.6f}", flush=True)  # not the same twice
                state.step += 1
                time.sleep(0.05)
                safepoint()
        """)
        proc = subprocess.Popen([str(BIN / "mosrun"), "-A", "0.5", "-r", "n2", PY, "job.py"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
        running_task(rig)
        checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
        wait_for(lambda: list(checkpoints.glob("*.ckpt")), 20)
        time.sleep(1.0)
        os.kill(rig.node("n2")["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        warned = [line for line in stderr.decode().splitlines() if "not deterministic" in line]
        assert len(warned) == 1 and "the stdout of task n1." in warned[0], stderr
        # Still once each: every step's line, in order, none twice.
        assert [line.split()[0] for line in stdout.decode().splitlines()] == [str(i) for i in range(80)]
    finally:
        rig.stop()


FILES_JOB = """
    import time
    from mosrun import resumable, safepoint

    state = resumable(step=0, out=None, log=None, src=None, got=[])
    if state.out is None:
        state.out = open("out.txt", "a")
        state.log = open("log.bin", "wb")
        state.src = open("in.txt")
    while state.step < 60:
        state.out.write(f"line {state.step}\\n")
        state.log.write(bytes([state.step]) * 3)
        state.got.append(state.src.readline().strip())
        state.step += 1
        time.sleep(0.05)
        safepoint()
    print(state.out.mode, state.log.mode, state.src.mode, state.src.name)
    state.out.close()
    state.log.close()
    print(",".join(state.got))
"""


def test_files_open_at_home_stay_open_across_moves_with_their_mode_and_offset(shared_rig3: LocalRig,
                                                                             tmp_path: Path) -> None:
    runs = {}
    for name in ("local", "moved"):
        work = tmp_path / name
        work.mkdir()
        write(work / "job.py", FILES_JOB)
        (work / "in.txt").write_text("".join(f"word{i}\n" for i in range(100)))
        (work / "out.txt").write_text("before\n")
        if name == "local":
            done = subprocess.run([PY, "job.py"], cwd=work, capture_output=True, timeout=60)
        else:
            proc = start(shared_rig3, work, "job.py")
            task = running_task(shared_rig3)
            for where in ("n3", "n1", "n2"):
                time.sleep(0.3)
                result = json.loads(migrate(shared_rig3, task["id"], where).stdout)
                assert result["ok"], result
            stdout, stderr = proc.communicate(timeout=60)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        runs[name] = (done.returncode, done.stdout, done.stderr, (work / "out.txt").read_text(),
                      (work / "log.bin").read_bytes())
    assert runs["moved"] == runs["local"]
    assert runs["local"][1].startswith(b"a wb r in.txt\n")


def test_a_restarted_task_does_not_append_twice_to_a_home_file(tmp_path: Path) -> None:
    """Lines the task appended (and flushed) after its last checkpoint are written again by
    the copy restarted from it: they are checked against the file and not appended twice."""
    from conftest import start_rig

    job = """
        import time
        from mosrun import resumable, safepoint
        state = resumable(step=0, log=None)
        if state.log is None:
            state.log = open("log.txt", "a")
        while state.step < 80:
            state.log.write(f"step {state.step}\\n")
            state.log.flush()
            state.step += 1
            time.sleep(0.05)
            safepoint()
        state.log.close()
        print("done")
    """
    expected = None
    for name in ("local", "failover"):
        work = tmp_path / name
        work.mkdir()
        write(work / "job.py", job)
        (work / "log.txt").write_text("before\n")
        if name == "local":
            subprocess.run([PY, "job.py"], cwd=work, check=True, timeout=60)
            expected = (work / "log.txt").read_text()
            continue
        rig = start_rig(3, tmp_path / "rig", "--no-balance")
        try:
            wait_for(rig.converged, 30)
            proc = subprocess.Popen([str(BIN / "mosrun"), "-A", "0.5", "-r", "n2", PY, "job.py"], cwd=work,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rig.env)
            running_task(rig)
            checkpoints = Path(rig.node("n1")["state_dir"]) / "checkpoints"
            wait_for(lambda: list(checkpoints.glob("*.ckpt")), 20)
            time.sleep(1.0)  # more lines appended after the checkpoint
            os.kill(rig.node("n2")["pid"], signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            rig.stop()
        assert proc.returncode == 0 and stdout == b"done\n", stderr
        assert "restarted on" in stderr.decode() and "not deterministic" not in stderr.decode()
        assert (work / "log.txt").read_text() == expected
