"""Membership on real daemons: how long until every node of a ``mosixd --local N`` knows.

A real N-node local cluster (32 by default, gossip every second). Each run kills one node
with ``kill -9`` and times, from the kill, until the first node sees it suspect or down
and until every other node shows it ``down``; then restarts it and times until every node
shows it ``up`` again; then stops another with SIGTERM and times until every node shows it
``left``. Every node's view is asked over gRPC, all at once, every 50 ms.

The baseline, in the same run: the round simulator (``bench.rounds``) driving the same core
on N nodes, 1 round = 1 interval: rounds from the kill until every node knows.

    python -m bench.members --runs 5           # 32 nodes
    python -m bench.members --nodes 8 --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.localcluster import BIN, ClusterWatch, LocalCluster
from bench.rounds import RoundSim
from mosixd.core.gossip import GossipConfig, NodeState

POLL = 0.05


def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate`` holds (polled every POLL); inf if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(POLL)
    return math.inf


def simulated(n: int, trials: int) -> list[int]:
    """Rounds from a kill until every other node sees it down, in the round simulator."""
    out = []
    for seed in range(trials):
        sim = RoundSim.formed(n, GossipConfig(), seed=seed)
        for _ in range(3):
            sim.step()
        sim.kill("n2")
        for r in range(1, 61):
            sim.step()
            if sim.seeing("n2", [NodeState.DOWN]) == n - 1:
                out.append(r)
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = args.nodes
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="mosix-members-") as tmp:
        runtime = Path(tmp)
        started = time.monotonic()
        with LocalCluster(n, runtime, timeout=240):
            watch = ClusterWatch(runtime)
            everyone = list(watch.nodes)
            formed = until(lambda: all(v is not None and len(v) == n and set(v.values()) == {"up"}
                                       for v in watch.views().values()), 240)
            print(f"{n} daemons up and all seen up by all {time.monotonic() - started:.1f} s after start "
                  f"({formed:.1f} s after the first saw all up)")
            restarted: list[subprocess.Popen[bytes]] = []
            for run in range(args.runs):
                victim, leaver = everyone[(2 * run + 1) % n], everyone[(2 * run + 2) % n]
                others = [i for i in everyone if i != victim]
                os.kill(int(watch.nodes[victim]["pid"]), signal.SIGKILL)
                t0 = time.monotonic()
                first = until(lambda: any(v and v.get(victim) in ("suspect", "down")
                                          for v in watch.views(others).values()), 60)
                seen = until(lambda: watch.all_see(victim, "down", others), 120)
                down = time.monotonic() - t0 if math.isfinite(seen) else math.inf
                restarted.append(subprocess.Popen([str(BIN / "mosixd"), "--config", watch.nodes[victim]["config"]],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                back = until(lambda: watch.all_see(victim, "up", others), 120)
                rest = [i for i in everyone if i != leaver]
                pid = int(watch.nodes[leaver]["pid"])
                os.kill(pid, signal.SIGTERM)
                left = until(lambda: watch.all_see(leaver, "left", rest), 60)
                restarted.append(subprocess.Popen([str(BIN / "mosixd"), "--config", watch.nodes[leaver]["config"]],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                until(lambda: watch.all_see(leaver, "up", rest), 120)
                # The restarted processes are not the supervisor's: remember their pids.
                watch.nodes[victim]["pid"], watch.nodes[leaver]["pid"] = restarted[-2].pid, restarted[-1].pid
                rows.append({"first": first, "down": down, "back": back, "left": left})
                print(f"run {run + 1}: {victim} killed: first suspicion {first:.2f} s, down everywhere "
                      f"{down:.2f} s, back up everywhere {back:.2f} s after its restart; {leaver} stopped: "
                      f"left everywhere {left:.2f} s", flush=True)
            watch.close()
            for proc in restarted:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in restarted:
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    proc.kill()
    rounds = simulated(n, 15)
    sim = statistics.median(rounds)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print()
    print(f"mosix membership on {n} real daemons (mosixd --local {n}, gossip every 1 s), medians of "
          f"{len(rows)} runs")
    print(f"{'event':<44} {'median s':>9} {'min':>6} {'max':>6} {'goal':>6} {'sim rounds':>10} {'ratio':>6}")
    for key, label, goal in (("first", "kill -9 -> first node sees it suspect", ""),
                             ("down", "kill -9 -> every node shows it down", "10"),
                             ("back", "restart -> every node shows it up", ""),
                             ("left", "SIGTERM -> every node shows it left", "")):
        values = [r[key] for r in rows]
        ratio = f"{med(key) / sim:>6.2f}" if key == "down" else ""
        simcol = f"{sim:>10.0f}" if key == "down" else ""
        print(f"{label:<44} {med(key):>9.2f} {min(values):>6.2f} {max(values):>6.2f} {goal:>6} {simcol:>10} {ratio:>6}")
    print(f"sim rounds: the round simulator on {n} nodes, median of {len(rounds)} trials (1 round = 1 s); "
          "ratio = seconds / rounds")


if __name__ == "__main__":
    main()
