"""Gossip benchmark: the real ``mosixd.core.gossip.GossipView`` driven in a round simulation.

Every node runs the real core. A round: every node computes its outgoing window at the
start of the round and chooses its targets; then each exchange is delivered push-pull,
both sides merging the other's start-of-round window. Every node has its own clock
offset, so only relative ages make the figures come out right. Clusters start formed
(every node has received every other node's entry once).

What it measures, for N = 16, 64, 256, 1024, 4096:

(a) Dissemination. With a window large enough to carry every node, every node refreshes
    its load at round 1; rounds until 99% of the nodes hold a given node's new entry,
    median over several trials and source nodes. Next to it: log2(N) + 2 (the goal: at
    most 12 at N = 1024) and MOSIX's push-only bound (1 + ln 2)·log2 N. Suspect probes
    are switched off here, so every node starts exactly one exchange per round, as in
    the bounds.
(b) Steady state with the default window (20) and default timing, after a warm-up: the
    median age (in rounds) of the entries a node holds and of those in its window, next
    to the down limit; entries wrongly seen down; and the fraction of nodes whose window
    holds at least one of the 5% least-loaded nodes (random loads), next to what a
    window of random entries would give.
(c) Bytes sent per node per round, both directions of push-pull, measured by serializing
    the actual windows as ``mosix_pb2.GossipMessage`` (``ByteSize()``).

Run from the repository root (a full run takes several minutes on two cores):

    python -m bench.gossip           # full
    python -m bench.gossip --quick   # smoke run: N = 16, 64
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector
from mosixd.wire import mosix_pb2

GiB = 1 << 30


def random_load(rng: random.Random) -> LoadVector:
    cpus = rng.choice([2, 4, 8, 16, 32])
    return LoadVector(
        load=rng.uniform(0.0, 2.0), cpus=cpus, speed=rng.uniform(0.7, 1.5),
        mem_total=cpus * 4 * GiB, mem_free=rng.randrange(cpus * 4 * GiB),
        local_tasks=rng.randrange(8), guest_tasks=rng.randrange(8), python="3.11.7",
    )


def message(sender: GossipView, window: Sequence[Entry]) -> mosix_pb2.GossipMessage:
    """The window as it goes on the wire."""
    return mosix_pb2.GossipMessage(
        sender_id=sender.node_id, sender_address=sender.address,
        entries=[mosix_pb2.GossipEntry(
            node_id=e.node_id, address=e.address, generation=e.generation, age=e.age,
            blocked=e.blocked, leaving=e.leaving,
            load=mosix_pb2.LoadVector(
                load=e.load.load, cpus=e.load.cpus, speed=e.load.speed,
                mem_total=e.load.mem_total, mem_free=e.load.mem_free,
                local_tasks=e.load.local_tasks, guest_tasks=e.load.guest_tasks,
                python=e.load.python))
            for e in window])


class Cluster:
    """N real GossipViews, each with its own clock, exchanging in synchronous rounds."""

    def __init__(self, n: int, config: GossipConfig, seed: int) -> None:
        # The simulation makes no reference cycles: the cyclic collector would only
        # rescan millions of live entries, doubling the run time for nothing.
        gc.disable()
        rng = random.Random(seed)
        self.config = config
        self.round_no = 0
        self.offsets = [rng.uniform(0.0, 1e6) for _ in range(n)]
        self.loads = [random_load(rng) for _ in range(n)]
        self.views = [
            GossipView(f"n{i + 1}", f"10.{i // 250}.{i % 250}.1:7000", config,
                       self.offsets[i], generation=1, load=self.loads[i],
                       rng=random.Random(seed * 100_003 + i))
            for i in range(n)
        ]
        self.index = {v.address: i for i, v in enumerate(self.views)}
        self.windows: list[list[Entry]] = []
        self.pairs: list[tuple[int, int]] = []
        # A formed cluster: everyone has heard everyone once.
        own = [v.outgoing(self.now(i))[0] for i, v in enumerate(self.views)]
        for i, v in enumerate(self.views):
            v.receive(own, self.now(i))

    def now(self, i: int) -> float:
        return self.round_no * self.config.interval + self.offsets[i]

    def step(self) -> None:
        """One round: windows and targets at its start, then push-pull exchanges."""
        self.round_no += 1
        views, now, index = self.views, self.now, self.index
        self.windows = []  # free last round's entries first: big windows are N^2 objects
        self.windows = [v.outgoing(now(i)) for i, v in enumerate(views)]
        self.pairs = [(i, index[a]) for i, v in enumerate(views)
                      for a in v.choose_targets(now(i))]
        for i, j in self.pairs:
            views[j].receive(self.windows[i], now(j))
            views[i].receive(self.windows[j], now(i))
            views[i].contact_succeeded(views[j].address, now(i))

    def bytes_per_node(self, sample: int, rng: random.Random) -> tuple[float, int]:
        """Bytes sent per node in the last round (request + reply of every exchange),
        from serialized windows; with more than ``sample`` windows, from a sample."""
        used = sorted({i for pair in self.pairs for i in pair})
        if len(used) > sample:
            used = rng.sample(used, sample)
        size = statistics.fmean(message(self.views[i], self.windows[i]).ByteSize()
                                for i in used)
        return 2 * len(self.pairs) * size / len(self.views), len(used)


# ------------------------------------------------------------------ (a) dissemination


@dataclass
class Spread:
    rounds: list[float] = field(default_factory=list)  # per source: rounds to 99%
    exchanges: float = 0.0  # exchanges started per node per round
    stale: float = 0.0  # held entries older than the default down_after at the end
    bytes: float = 0.0
    sampled: int = 0
    seconds: float = 0.0


def dissemination(n: int, seed: int, sources: int = 32, max_rounds: int = 60) -> Spread:
    """One trial of (a): all nodes refresh at round 1; track some sources to 99%."""
    started = time.perf_counter()
    off = 1e9  # no suspects and no downs: exactly one random peer per node per round
    cluster = Cluster(n, GossipConfig(window=n, suspect_after=off, down_after=off), seed)
    rng = random.Random(seed)
    fresh = [random_load(rng) for _ in range(n)]
    for i, v in enumerate(cluster.views):
        v.set_load(fresh[i], cluster.now(i))
    tracked = rng.sample(range(n), min(n, sources))
    need = math.ceil(0.99 * n)
    out = Spread()
    done: dict[int, int] = {}
    exchanges = 0
    while len(done) < len(tracked) and cluster.round_no < max_rounds:
        cluster.step()
        exchanges += len(cluster.pairs)
        for s in tracked:
            if s in done:
                continue
            sid = cluster.views[s].node_id
            held = sum(1 for j, v in enumerate(cluster.views)
                       if v.entry(sid, cluster.now(j)).load is fresh[s])  # type: ignore[union-attr]
            if held >= need:
                done[s] = cluster.round_no
    out.rounds = [float(done.get(s, math.inf)) for s in tracked]
    out.exchanges = exchanges / n / cluster.round_no
    holders = rng.sample(range(n), min(n, 32))
    ages = [e.age for j in holders for e in cluster.views[j].view(cluster.now(j))[1:]]
    out.stale = sum(a > GossipConfig().down_after for a in ages) / len(ages)
    out.bytes, out.sampled = cluster.bytes_per_node(16, rng)
    out.seconds = time.perf_counter() - started
    return out


# ------------------------------------------------------------------ (b) steady state


@dataclass
class Steady:
    warmup: int = 0
    short: bool = False  # warm-up shorter than the down limit (cost): no downs possible
    age_held: float = 0.0  # rounds, median
    age_window: float = 0.0
    age_max: float = 0.0
    down_limit: float = 0.0  # rounds
    false_down: float = 0.0
    window_has_light: float = 0.0
    random_window_has_light: float = 0.0
    view_has_light_up: float = 0.0
    exchanges: float = 0.0
    bytes: float = 0.0
    sampled: int = 0
    seconds: float = 0.0


def warmup_rounds(n: int, config: GossipConfig, budget: int) -> tuple[int, bool]:
    """Rounds to warm up for (b), and whether that is shorter than the down limit.

    Past the down limit (plus a quarter) the age distribution, the suspect probes and any
    false downs are in their steady state. When that costs more than ``budget``
    node-rounds, settle for twice the time a given entry takes to reach a given node
    (about n / (2 (window - 1)) rounds, each node taking in about two windows): enough
    for the median ages, whose refreshes come at random, but not for the tail.
    """
    limit = config.down_after * max(1.0, n / config.window) / config.interval
    full = math.ceil(1.25 * limit) + 20
    if n * full <= budget:
        return full, False
    return 20 + 2 * math.ceil(n / (2 * (config.window - 1))), True


def steady_state(n: int, seed: int, budget: int = 1_500_000, measure_rounds: int = 5,
                 holders: int = 64) -> Steady:
    """(b) and (c) with the default window and timing."""
    started = time.perf_counter()
    config = GossipConfig()
    cluster = Cluster(n, config, seed)
    rng = random.Random(seed)
    w = config.window - 1
    warmup, short = warmup_rounds(n, config, budget)
    for _ in range(warmup):
        cluster.step()
    light = set(sorted(range(n), key=lambda i: cluster.loads[i].load)[:math.ceil(0.05 * n)])
    light_ids = {cluster.views[i].node_id for i in light}
    out = Steady(warmup=warmup, short=short,
                 down_limit=cluster.views[0].down_limit() / config.interval)
    held: list[float] = []
    in_window: list[float] = []
    down = seen = has_light = has_light_up = checked = exchanges = 0
    byte_figures = []
    for _ in range(measure_rounds):
        cluster.step()
        exchanges += len(cluster.pairs)
        for j in rng.sample(range(n), min(n, holders)):
            views = cluster.views[j].view(cluster.now(j))[1:]
            held += [v.age / config.interval for v in views]
            window = cluster.windows[j][1:]  # sent this round, ages as of its start
            in_window += [e.age / config.interval for e in window]
            down += sum(v.state is NodeState.DOWN for v in views)
            seen += len(views)
            has_light += any(e.node_id in light_ids for e in window)
            has_light_up += any(v.id in light_ids and v.state is NodeState.UP for v in views)
            checked += 1
        byte_figures.append(cluster.bytes_per_node(256, rng))
    out.age_held = statistics.median(held)
    out.age_window = statistics.median(in_window)
    out.age_max = max(held)
    out.false_down = down / seen
    out.window_has_light = has_light / checked
    out.view_has_light_up = has_light_up / checked
    # A window of w entries drawn at random from the n - 1 others.
    k, m = min(w, n - 1), len(light)

    def p_random(m_others: int) -> float:
        return 1 - math.comb(n - 1 - m_others, k) / math.comb(n - 1, k)

    out.random_window_has_light = (m * p_random(m - 1) + (n - m) * p_random(m)) / n
    out.exchanges = exchanges / n / measure_rounds
    out.bytes = statistics.fmean(b for b, _ in byte_figures)
    out.sampled = min(s for _, s in byte_figures)
    out.seconds = time.perf_counter() - started
    return out


# ------------------------------------------------------------------ running and printing


def run_jobs(jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]], workers: int) -> list[Any]:
    """Run the jobs, biggest first, on ``workers`` processes; results in job order."""
    if workers <= 1:
        return [fn(*args) for fn, args in jobs]
    order = sorted(range(len(jobs)), key=lambda k: -cost(jobs[k]))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {k: pool.submit(jobs[k][0], *jobs[k][1]) for k in order}
        return [futures[k].result() for k in range(len(jobs))]


def cost(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> float:
    """Rough seconds a job takes, to start the biggest first."""
    fn, (n, *_) = job
    if fn is dissemination:
        return 1e-6 * n * n * math.log2(n)
    return 1.3e-4 * n * warmup_rounds(n, GossipConfig(), 1_500_000)[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 16, 64")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    sizes = [16, 64] if args.quick else [16, 64, 256, 1024, 4096]
    # Full windows cost N^2 entries per round in pure Python: fewer trials for big N.
    trials = {16: 5, 64: 5, 256: 5, 1024: 3, 4096: 1}
    if args.quick:
        trials = {16: 2, 64: 2}
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for n in sizes:
        jobs += [(dissemination, (n, 1000 * n + t)) for t in range(trials[n])]
        jobs.append((steady_state, (n, 7 * n)))
    started = time.perf_counter()
    results = iter(run_jobs(jobs, args.jobs))
    spreads: dict[int, list[Spread]] = {}
    steadies: dict[int, Steady] = {}
    for n in sizes:
        spreads[n] = [next(results) for _ in range(trials[n])]
        steadies[n] = next(results)

    print("mosix gossip benchmark: the real GossipView in a round simulation, "
          "every node on its own clock")
    print()
    print("(a) dissemination, window >= N, no suspect probes: rounds until 99% of nodes "
          "hold a node's entry from round 1")
    print("    median over trials x tracked sources; bounds: log2 N + 2 and MOSIX push-only "
          "(1+ln2)·log2 N")
    print(f"{'N':>6} {'trials':>6} {'srcs':>5} {'median':>7} {'min':>4} {'max':>4} "
          f"{'log2N+2':>8} {'ratio':>6} {'(1+ln2)log2N':>13} {'ratio':>6} "
          f"{'exch/node/rd':>12} {'age>5s':>7} {'sec':>6}")
    for n in sizes:
        rounds = [r for s in spreads[n] for r in s.rounds]
        med = statistics.median(rounds)
        goal, mosix = math.log2(n) + 2, (1 + math.log(2)) * math.log2(n)
        print(f"{n:>6} {len(spreads[n]):>6} {len(rounds):>5} {med:>7.1f} {min(rounds):>4.0f} "
              f"{max(rounds):>4.0f} {goal:>8.1f} {med / goal:>6.2f} {mosix:>13.1f} "
              f"{med / mosix:>6.2f} {statistics.fmean(s.exchanges for s in spreads[n]):>12.2f} "
              f"{statistics.fmean(s.stale for s in spreads[n]):>7.1%} "
              f"{sum(s.seconds for s in spreads[n]):>6.0f}")
    if 4096 in trials and trials[4096] < trials.get(1024, 0):
        print(f"    N=4096: {trials[4096]} trial(s) only: a full window moves N^2 entries "
              "per round in pure Python")
    print("    age>5s: held entries older than the default down_after (5 s, unscaled when "
          "window >= N) at the end of a trial")
    print()
    print("(b) steady state, default config (window 20, interval 1 s, down 5 s x max(1, "
          "N/window), suspect 2.5 s x the same), random loads")
    print(f"{'N':>6} {'warmup':>6} {'age held':>8} {'window':>6} {'oldest':>6} "
          f"{'down limit':>10} {'false down':>10} {'exch/node/rd':>12} {'win∋light5%':>11} "
          f"{'random win':>10} {'ratio':>6} {'view∋light up':>13} {'sec':>5}")
    for n in sizes:
        s = steadies[n]
        print(f"{n:>6} {s.warmup:>5}{'*' if s.short else ' '} {s.age_held:>8.1f} "
              f"{s.age_window:>6.1f} {s.age_max:>6.0f} {s.down_limit:>10.1f} "
              f"{s.false_down:>10.2%} {s.exchanges:>12.2f} {s.window_has_light:>11.1%} "
              f"{s.random_window_has_light:>10.1%} "
              f"{s.window_has_light / s.random_window_has_light:>6.2f} "
              f"{s.view_has_light_up:>13.1%} {s.seconds:>5.0f}")
    print("    ages in rounds: medians of the entries a node holds and of those in its window; "
          "oldest held entry seen")
    print("    exch/node/rd: exchanges started per node per round (above 1: suspect probes)")
    print("    win∋light5%: nodes whose window holds one of the 5% least-loaded nodes; "
          "random win: the same for")
    print("    a window of random entries; view∋light up: nodes that see one of them UP")
    if any(steadies[n].short for n in sizes):
        print("    * warm-up shorter than 1.25 x the down limit (pure Python cost): no entry can "
              "be old enough yet to be")
        print("      probed or seen down, so 'false down' and probes are not measured there")
    print()
    print("(c) bytes per node per round, both directions of push-pull, from "
          "GossipMessage.ByteSize() of the real windows")
    print(f"{'N':>6} | {'window 20:':>10} {'exch/node':>9} {'B/exch':>7} {'B/node/rd':>9} "
          f"{'B/entry':>7} | {'full window:':>12} {'exch/node':>9} {'B/exch':>8} "
          f"{'B/node/rd':>10} {'B/entry':>7}")
    for n in sizes:
        s = steadies[n]
        f_exch = statistics.fmean(x.exchanges for x in spreads[n])
        f_bytes = statistics.fmean(x.bytes for x in spreads[n])
        b20, bfull = s.bytes / s.exchanges, f_bytes / f_exch
        print(f"{n:>6} | {'':>10} {s.exchanges:>9.2f} {b20:>7.0f} {s.bytes:>9.0f} "
              f"{b20 / (2 * min(20, n)):>7.1f} | {'':>12} {f_exch:>9.2f} {bfull:>8.0f} "
              f"{f_bytes:>10.0f} {bfull / (2 * n):>7.1f}")
    print("    B/exch: request + reply; window-20 sizes from up to 256 serialized windows per "
          "round, full windows from 16")
    print("    MOSIX's push-only gossip sends one window per exchange: half of B/exch")
    print()
    print(f"total {time.perf_counter() - started:.0f} s on {args.jobs} worker(s)")


if __name__ == "__main__":
    main()
