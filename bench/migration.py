"""Freeze time of a move and the cost of an idle safepoint().

Freeze time is measured inside the task: the largest gap between the moment it reaches its
safe point and the next top of its loop. Without a move that gap is microseconds; across a
move it spans "stopped at its safe point on n2" to "running again on n3" (the restored copy's
first tick). Baselines from the same run: a bare ``python -c pass`` start (goal for 1 KB: within
3x) and a raw TCP loopback stream (goal for 256 MB: an effective rate of at least half of it).

    python -m bench.migration [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import timeit
from pathlib import Path

from bench.localcluster import LocalCluster

BIN = Path(sys.executable).parent

JOB = """
import sys, time
from mosrun import resumable, safepoint

state = resumable(step=0, last=0.0, gap=0.0, blob=None)
if state.blob is None:
    state.blob = bytearray({size})
while state.step < {steps}:
    if state.last:
        state.gap = max(state.gap, time.time() - state.last)
    state.step += 1
    time.sleep(0.02)
    state.last = time.time()
    safepoint()
print(state.gap, file=sys.stderr)
"""


def python_start() -> float:
    samples = []
    for _ in range(15):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def tcp_rate(megabytes: int = 256) -> float:
    """Bytes/s of one raw TCP stream on loopback (the same machine, the same moment)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    total = megabytes << 20

    def sink() -> None:
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        got = 0
        while got < total:
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    block = b"x" * (1 << 20)
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(megabytes):
            client.sendall(block)
    thread.join()
    server.close()
    return total / (time.perf_counter() - t)


def one_move(env: dict[str, str], work: Path, size: int) -> float:
    (work / "job.py").write_text(textwrap.dedent(JOB.format(size=size, steps=200)))
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", sys.executable, "job.py"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    task_id = ""
    for _ in range(100):
        # Running, its state allocated, and its home told so by a usage report: the target
        # then faults in room for the state before the freeze (a move in the task's first
        # moments would pay for fresh pages during the freeze).
        out = subprocess.run([str(BIN / "mosps"), "--json"], capture_output=True, text=True, env=env)
        tasks = [t for t in json.loads(out.stdout)["tasks"] if t["state"] == "running"] if out.returncode == 0 else []
        if tasks and tasks[0]["rss"] >= size:
            task_id = tasks[0]["id"]
            break
        time.sleep(0.1)
    if not task_id:
        raise RuntimeError("the task did not start, or its home never learnt its size")
    moved = subprocess.run([str(BIN / "migrate"), "--json", task_id, "n3"], capture_output=True, text=True,
                           env=env, timeout=300)
    _, err = proc.communicate(timeout=300)
    if not json.loads(moved.stdout or "{}").get("ok"):
        raise RuntimeError(f"move failed: {moved.stdout} {moved.stderr}")
    lines = err.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"no gap reported; move said {moved.stdout!r}, exit {proc.returncode}")
    return float(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from mosrun import resumable, safepoint

    resumable(step=0)
    n = 2_000_000
    idle = min(timeit.repeat(safepoint, number=n, repeat=5)) / n

    def empty() -> None:
        pass

    call = min(timeit.repeat(empty, number=n, repeat=5)) / n

    work = Path(tempfile.mkdtemp(prefix="mosix-bench-"))
    rows = []
    with LocalCluster(3, work / "runtime") as cluster:
        env = cluster.env
        start = python_start()
        tcp = tcp_rate()
        for label, size in (("1 KB", 1 << 10), ("1 MB", 1 << 20), ("64 MB", 64 << 20), ("256 MB", 256 << 20)):
            freeze = statistics.median(one_move(env, work, size) for _ in range(args.repeat))
            rows.append((label, size, freeze))
    print(f"safepoint() with nothing pending: {idle * 1e9:.1f} ns (an empty function call: {call * 1e9:.1f} ns; "
          f"goal < 200 ns)")
    print(f"baselines: python -c pass {start * 1e3:.1f} ms; raw TCP loopback {tcp / 1e9:.2f} GB/s")
    print(f"freeze time (stopped on n2 -> running on n3), median of {args.repeat}:")
    for label, size, freeze in rows:
        rate = size / freeze
        print(f"  {label:>7}: {freeze * 1e3:8.1f} ms   = {freeze / start:5.1f}x python start   "
              f"effective {rate / 1e6:8.1f} MB/s = {rate / tcp:.2f}x TCP")


if __name__ == "__main__":
    main()
