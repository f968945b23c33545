"""Idle CPU of each daemon in a 16-node ``mosixd --local`` cluster.

Starts a real local cluster, waits until every node is seen up, then reads each node
process's CPU time (user + system, psutil) over a measuring window. Goal: under 1% of a core
per daemon. A bare sleeping Python process is measured in the same window as a baseline.

    python -m bench.idle_cpu [--nodes 16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.localcluster import LocalCluster


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=7490)
    args = parser.parse_args()

    runtime = Path(tempfile.mkdtemp(prefix="mosix-bench-"))
    try:
        cluster = LocalCluster(args.nodes, runtime, port=args.port, timeout=90)
    except RuntimeError as exc:
        sys.exit(str(exc))
    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        time.sleep(3.0)  # let start-up work settle
        pids = [n["pid"] for n in json.loads((runtime / "local.json").read_text())["nodes"]]
        procs = [psutil.Process(pid) for pid in pids] + [psutil.Process(baseline.pid)]
        before = [cpu_seconds(p) for p in procs]
        start = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - start
        after = [cpu_seconds(p) for p in procs]
    finally:
        cluster.stop()
        baseline.kill()
    shares = [100 * (a - b) / elapsed for a, b in zip(after, before)]
    daemons, base = shares[:-1], shares[-1]
    print(f"idle CPU over {elapsed:.0f} s, {args.nodes}-node local cluster (% of one core per daemon)")
    print(f"  median {statistics.median(daemons):.2f}%   max {max(daemons):.2f}%   "
          f"min {min(daemons):.2f}%   goal < 1%  (median/goal = {statistics.median(daemons) / 1.0:.2f}x)")
    print(f"  baseline: a sleeping python process {base:.3f}%")


if __name__ == "__main__":
    main()
