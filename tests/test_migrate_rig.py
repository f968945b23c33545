"""Moving running Python tasks between nodes of the rig with ``migrate``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def migrate(rig: LocalRig, task_id: str, where: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return rig.tool("migrate", "--json", task_id, where, timeout=timeout)


def test_a_task_moved_mid_run_prints_what_a_local_run_prints(shared_rig3: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", COUNTER.format(steps=30, pause=0.05))
    local = subprocess.run([PY, "job.py"], cwd=tmp_path, capture_output=True, timeout=60)
    proc = start(shared_rig3, tmp_path, "job.py")
    task = running_task(shared_rig3)
    time.sleep(0.5)
    out = migrate(shared_rig3, task["id"], "n3")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"], out.stderr
    assert result["node"] == "n3" and result["freeze_seconds"] > 0
    assert wait_for(lambda: [t["where"] for t in shared_rig3.tasks("n1")] in (["n3"], []), 10)
    stdout, stderr = proc.communicate(timeout=60)
    assert (stdout, stderr, proc.returncode) == (local.stdout, local.stderr, local.returncode)


def test_ten_moves_in_a_row(shared_rig3: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", COUNTER.format(steps=80, pause=0.05))
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


def test_unpicklable_state_refuses_the_move_and_the_task_goes_on(shared_rig3: LocalRig, tmp_path: Path) -> None:
    write(tmp_path / "job.py", """
        import socket, time
        from mosrun import resumable, safepoint

        state = resumable(step=0, conn=None)
        state.conn = socket.socket()
        while state.step < 30:
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
    assert (stdout, proc.returncode) == (b"finished 30\n", 0)


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
        # Kill the target once the move is under way (the checkpoint is hundreds of MB).
        time.sleep(0.6)
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

    from mosixd.auth import load_key, open_channel
    from mosixd.wire import mosix_pb2 as pb
    from mosixd.wire import mosix_pb2_grpc as rpc

    write(tmp_path / "job.py", COUNTER.format(steps=40, pause=0.05))
    proc = start(shared_rig3, tmp_path, "job.py")
    try:
        task = running_task(shared_rig3)
        key = load_key(Path(shared_rig3.registry()["key_file"]))
        with open_channel(shared_rig3.node("n1")["address"], key) as channel:
            reply = rpc.AdminStub(channel).Migrate(
                pb.MigrateRequest(task_id=task["id"], target="n3", uid=os.getuid() + 4242), timeout=30)
        assert not reply.ok and "only the owner" in reply.message
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    del grpc
