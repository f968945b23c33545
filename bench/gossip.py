"""Gossip benchmark: the real ``mosixd.core.gossip.GossipView`` driven in a round simulation.

Every node runs the real core in the strict rounds of ``bench.rounds`` (messages built at
the start of a round, taken in at its end; each node on its own clock). Clusters start
formed: every node has heard every other node's entry once.

What it measures, for N = 16, 64, 256, 1024, 4096:

(a) Dissemination of load. With a window large enough to carry every node, every node
    refreshes its load at round 1; rounds until 99% of the nodes hold a given node's new
    entry, median over several trials and source nodes. Next to it: log2(N) + 2 and MOSIX's
    push-only bound (1 + ln 2)·log2 N. Stale exchanges are switched off here, so every
    node starts exactly one exchange per round, as in the bounds.
(b) Steady state with the default window (20) and default timing, after a warm-up: the
    median age (in rounds) of the entries a node holds and of those in its window; nodes
    wrongly seen not up; and the fraction of nodes whose window holds at least one of the
    5% least-loaded nodes (random loads), next to what a window of random entries gives.
(c) Bytes sent per node per round, every message counted (requests, replies, pushes,
    relayed probes), each as the ``mosix_pb2.GossipMessage`` it is on the wire.
(d) Membership, with 0% and 1% of messages lost: one node killed (kill -9) and, once the
    cluster knows, another leaving gracefully; rounds until 50% / 99% / 100% of the live
    nodes see it down (left); false downs (deaths declared of live nodes: must be 0);
    bytes per node per round while the news spreads. A model fitted on the medians,
    rounds = a + b·log2 N, gives the figures at N = 65,535, with its error on the sizes it
    was fitted on.
(e) Memory a node needs per member, measured with tracemalloc on one view of 65,535
    members whose entries were decoded from the wire.

Run from the repository root (a full run takes about half an hour on two cores):

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
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from bench.rounds import RoundSim
from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor, Status
from mosixd.wire import codec
from mosixd.wire import mosix_pb2 as pb

GiB = 1 << 30
MODEL_N = 65_535


def random_load(name: str, rng: random.Random) -> LoadVector:
    cpus = rng.choice([2, 4, 8, 16, 32])
    return LoadVector(
        load=rng.uniform(0.0, 2.0), cpus=cpus, speed=rng.uniform(0.7, 1.5),
        mem_total=cpus * 4 * GiB, mem_free=rng.randrange(cpus * 4 * GiB),
        local_tasks=rng.randrange(8), guest_tasks=rng.randrange(8), python="3.11.7",
    )


class ByteMeter:
    """Counts the bytes of every message sent, as serialized ``GossipMessage``s.

    Protobuf sizes add up field by field, so a message is its header, plus its window
    (serialized once per round: the same list goes to every peer of the round), plus its
    rumors."""

    def __init__(self) -> None:
        self.total = 0
        self.messages = 0
        self._windows: dict[int, tuple[list[Entry], int]] = {}

    def new_round(self) -> None:
        self._windows.clear()

    def __call__(self, sender: GossipView, entries: list[Entry] | None, rumors: list[Rumor]) -> None:
        size = pb.GossipMessage(sender_id=sender.node_id, sender_address=sender.address,
                                rumors_only=entries is None).ByteSize()
        if entries:
            cached = self._windows.get(id(entries))
            if cached is None or cached[0] is not entries:
                cached = self._windows[id(entries)] = (
                    entries, pb.GossipMessage(entries=[codec.entry_to_pb(e) for e in entries]).ByteSize())
            size += cached[1]
        if rumors:
            size += pb.GossipMessage(rumors=[codec.rumor_to_pb(r) for r in rumors]).ByteSize()
        self.total += size
        self.messages += 1


def formed(n: int, config: GossipConfig, seed: int, loss: float = 0.0) -> RoundSim:
    # The simulation makes no reference cycles: the cyclic collector would only rescan
    # millions of live records, doubling the run time for nothing.
    gc.disable()
    return RoundSim.formed(n, config, seed=seed, loss=loss, load=random_load)


# ------------------------------------------------------------------ (a) dissemination


@dataclass
class Spread:
    rounds: list[float] = field(default_factory=list)  # per source: rounds to 99%
    exchanges: float = 0.0  # exchanges started per node per round
    bytes: float = 0.0
    seconds: float = 0.0


def dissemination(n: int, seed: int, sources: int = 32, max_rounds: int = 60) -> Spread:
    """One trial of (a): all nodes refresh at round 1; track some sources to 99%."""
    started = time.perf_counter()
    off = 1e9  # no stale exchanges: exactly one random peer per node per round
    sim = formed(n, replace(GossipConfig(), window=n, stale_after=off), seed)
    names = list(sim.nodes)
    rng = random.Random(seed)
    fresh = {name: random_load(name, rng) for name in names}
    for name in names:
        sim.nodes[name].set_load(fresh[name], sim.now(name))
    tracked = rng.sample(names, min(n, sources))
    need = math.ceil(0.99 * n)
    out = Spread()
    done: dict[str, int] = {}
    exchanges = 0
    meter = ByteMeter()
    while len(done) < len(tracked) and sim.round_no < max_rounds:
        sim.meter = meter if sim.round_no == 2 else None  # one round's bytes (full windows: N^2)
        meter.new_round()
        sim.step()
        exchanges += len(sim.exchanges)
        for s in tracked:
            if s in done:
                continue
            held = sum(1 for j in names
                       if sim.nodes[j].entry(s, sim.now(j)).load is fresh[s])  # type: ignore[union-attr]
            if held >= need:
                done[s] = sim.round_no
    out.rounds = [float(done.get(s, math.inf)) for s in tracked]
    out.exchanges = exchanges / n / sim.round_no
    out.bytes = meter.total / n
    out.seconds = time.perf_counter() - started
    return out


# ------------------------------------------------------------------ (b, c) steady state


@dataclass
class Steady:
    warmup: int = 0
    short: bool = False  # warm-up shorter than the stale limit (cost): no stale exchanges yet
    age_held: float = 0.0  # rounds, median
    age_window: float = 0.0
    age_max: float = 0.0
    stale_limit: float = 0.0  # rounds
    not_up: float = 0.0
    window_has_light: float = 0.0
    random_window_has_light: float = 0.0
    view_has_light_up: float = 0.0
    exchanges: float = 0.0
    bytes: float = 0.0
    messages: float = 0.0  # per node per round, replies included
    seconds: float = 0.0


def warmup_rounds(n: int, config: GossipConfig, budget: int) -> tuple[int, bool]:
    """Rounds to warm up for (b), and whether that is shorter than the stale limit.

    Past the stale limit (plus a quarter) the age distribution and the stale exchanges are
    in their steady state. When that costs more than ``budget`` node-rounds, settle for
    twice the time a given entry takes to reach a given node (about n / (2 (window - 1))
    rounds): enough for the median ages, but not for the tail.
    """
    limit = config.stale_after * max(1.0, n / config.window) / config.interval
    full = math.ceil(1.25 * limit) + 20
    if n * full <= budget:
        return full, False
    return 20 + 2 * math.ceil(n / (2 * (config.window - 1))), True


def steady_state(n: int, seed: int, budget: int = 1_500_000, measure_rounds: int = 5,
                 holders: int = 64) -> Steady:
    """(b) and (c) with the default window and timing."""
    started = time.perf_counter()
    config = GossipConfig()
    sim = formed(n, config, seed)
    names = list(sim.nodes)
    rng = random.Random(seed)
    w = config.window - 1
    warmup, short = warmup_rounds(n, config, budget)
    for _ in range(warmup):
        sim.step()
    loads = {name: sim.nodes[name].view(0.0)[0].load.load for name in names}
    light = set(sorted(names, key=loads.__getitem__)[:math.ceil(0.05 * n)])
    out = Steady(warmup=warmup, short=short,
                 stale_limit=config.stale_after * max(1.0, n / config.window) / config.interval)
    held: list[float] = []
    in_window: list[float] = []
    not_up = seen = has_light = has_light_up = checked = exchanges = 0
    meter = ByteMeter()
    sim.meter = meter
    for _ in range(measure_rounds):
        meter.new_round()
        sim.step()
        exchanges += len(sim.exchanges)
        for j in rng.sample(names, min(n, holders)):
            views = sim.nodes[j].view(sim.now(j))[1:]
            held += [v.age / config.interval for v in views]
            window = sim.windows[j][1:]  # sent this round, ages as of its start
            in_window += [e.age / config.interval for e in window]
            not_up += sum(v.state is not NodeState.UP for v in views)
            seen += len(views)
            has_light += any(e.node_id in light for e in window)
            has_light_up += any(v.id in light and v.state is NodeState.UP for v in views)
            checked += 1
    out.age_held = statistics.median(held)
    out.age_window = statistics.median(in_window)
    out.age_max = max(held)
    out.not_up = not_up / seen
    out.window_has_light = has_light / checked
    out.view_has_light_up = has_light_up / checked
    # A window of w entries drawn at random from the n - 1 others.
    k, m = min(w, n - 1), len(light)

    def p_random(m_others: int) -> float:
        return 1 - math.comb(n - 1 - m_others, k) / math.comb(n - 1, k)

    out.random_window_has_light = (m * p_random(m - 1) + (n - m) * p_random(m)) / n
    out.exchanges = exchanges / n / measure_rounds
    out.bytes = meter.total / n / measure_rounds
    out.messages = meter.messages / n / measure_rounds
    out.seconds = time.perf_counter() - started
    return out


# ------------------------------------------------------------------ (d) membership


@dataclass
class Membership:
    death: dict[float, float] = field(default_factory=dict)  # share of live nodes -> rounds
    leave: dict[float, float] = field(default_factory=dict)
    suspect: float = math.inf  # rounds until the first suspicion
    false_downs: int = 0  # deaths declared of live nodes
    false_suspects: int = 0  # suspicions of live nodes (refuted)
    bytes_quiet: float = 0.0  # per node per round, before the kill
    bytes_news: float = 0.0  # per node per round, from the kill until all know
    bytes_peak: float = 0.0  # the costliest round
    seconds: float = 0.0


SHARES = (0.5, 0.99, 1.0)


def membership(n: int, loss: float, seed: int, max_rounds: int = 60) -> Membership:
    """One trial of (d): a kill -9, then a graceful leave, in one formed cluster."""
    started = time.perf_counter()
    sim = formed(n, GossipConfig(), seed, loss)
    names = list(sim.nodes)
    rng = random.Random(seed)
    victim, leaver = rng.sample(names, 2)
    out = Membership()
    meter = ByteMeter()
    sim.meter = meter
    told: list[Rumor] = []

    def watch(sender: GossipView, entries: list[Entry] | None, rumors: list[Rumor]) -> None:
        meter(sender, entries, rumors)
        told.extend(r for r in rumors if r.status in (Status.SUSPECT, Status.DEAD))

    sim.meter = watch
    for _ in range(3):  # the formed cluster's first rounds
        meter.new_round()
        sim.step()
    quiet = meter.total
    for _ in range(2):
        meter.new_round()
        sim.step()
    out.bytes_quiet = (meter.total - quiet) / n / 2
    told.clear()

    def spread(node: str, state: NodeState, marks: dict[float, float]) -> list[float]:
        per_round = []
        for r in range(1, max_rounds + 1):
            before = meter.total
            meter.new_round()
            sim.step()
            per_round.append((meter.total - before) / n)
            if node == victim and out.suspect == math.inf and sim.seeing(
                    victim, [NodeState.SUSPECT, NodeState.DOWN]):
                out.suspect = r
            seeing = sim.seeing(node, [state])
            for share in SHARES:
                if share not in marks and seeing >= math.ceil(share * (len(sim.alive) - (node in sim.alive))):
                    marks[share] = r
            if 1.0 in marks:
                break
        return per_round

    sim.kill(victim)
    news = spread(victim, NodeState.DOWN, out.death)
    out.bytes_news = statistics.fmean(news)
    out.bytes_peak = max(news)
    view = sim.nodes[leaver]
    now = sim.now(leaver)
    window = view.leave(now)
    for address in view.leave_targets(now):  # what the daemon does on SIGTERM
        peer = sim.by_address[address]
        rumors = view.rumors_for(address, now)
        meter(view, window, rumors)
        sim.nodes[peer].receive(window, sim.now(peer))
        sim.nodes[peer].hear(rumors, sim.now(peer))
    sim.kill(leaver)
    spread(leaver, NodeState.LEFT, out.leave)
    dead = {victim, leaver}
    out.false_downs = sum(1 for t in told if t.status is Status.DEAD and t.node_id not in dead)
    out.false_suspects = len({(t.node_id, t.incarnation) for t in told
                              if t.status is Status.SUSPECT and t.node_id not in dead})
    out.seconds = time.perf_counter() - started
    return out


def fit_log2(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of rounds = a + b·log2 N."""
    xs = [math.log2(n) for n, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


# ------------------------------------------------------------------ (e) memory


def memory_per_member(members: int = MODEL_N, seed: int = 5) -> tuple[float, float]:
    """Bytes a view holds per member: (all of it, the records alone without the entries)."""
    rng = random.Random(seed)
    wire = [codec.entry_to_pb(Entry(f"n{i}", f"10.{i // 62500}.{i // 250 % 250}.{i % 250}:7000", 1, 0,
                                    rng.uniform(0, 30), False, False, random_load("", rng)))
            for i in range(2, members + 1)]
    view = GossipView("n1", "10.0.0.1:7000", GossipConfig(), 0.0, generation=1,
                      load=random_load("", rng), rng=rng)
    decoded = [codec.entry_from_pb(m) for m in wire]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    view.receive(decoded, 0.0)
    records = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    again = [codec.entry_from_pb(m) for m in wire]
    entries = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del again
    return (records + entries) / (members - 1), records / (members - 1)


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
    if fn is membership:
        return 5e-6 * n * n + 7e-4 * n * 30
    return 1.3e-4 * n * warmup_rounds(n, GossipConfig(), 1_500_000)[0]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 16, 64")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    sizes = [16, 64] if args.quick else [16, 64, 256, 1024, 4096]
    losses = [0.0, 0.01]
    # Full windows cost N^2 entries per round in pure Python: fewer trials for big N.
    trials = {16: 5, 64: 5, 256: 5, 1024: 3, 4096: 1}
    swim_trials = {16: 15, 64: 11, 256: 7, 1024: 5, 4096: 2}
    if args.quick:
        trials, swim_trials = {16: 2, 64: 2}, {16: 3, 64: 3}
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    for n in sizes:
        jobs += [(dissemination, (n, 1000 * n + t)) for t in range(trials[n])]
        jobs.append((steady_state, (n, 7 * n)))
        jobs += [(membership, (n, loss, 31 * n + t)) for loss in losses for t in range(swim_trials[n])]
    started = time.perf_counter()
    results = iter(run_jobs(jobs, args.jobs))
    spreads: dict[int, list[Spread]] = {}
    steadies: dict[int, Steady] = {}
    swim: dict[tuple[int, float], list[Membership]] = {}
    for n in sizes:
        spreads[n] = [next(results) for _ in range(trials[n])]
        steadies[n] = next(results)
        for loss in losses:
            swim[n, loss] = [next(results) for _ in range(swim_trials[n])]
    per_member, per_record = memory_per_member(4096 if args.quick else MODEL_N)

    print("mosix gossip benchmark: the real GossipView in strict rounds, every node on its own clock")
    print()
    print("(a) dissemination, window >= N, no stale exchanges: rounds until 99% of nodes "
          "hold a node's entry from round 1")
    print("    median over trials x tracked sources; bounds: log2 N + 2 and MOSIX push-only "
          "(1+ln2)·log2 N")
    print(f"{'N':>6} {'trials':>6} {'srcs':>5} {'median':>7} {'min':>4} {'max':>4} "
          f"{'log2N+2':>8} {'ratio':>6} {'(1+ln2)log2N':>13} {'ratio':>6} "
          f"{'exch/node/rd':>12} {'sec':>6}")
    for n in sizes:
        rounds = [r for s in spreads[n] for r in s.rounds]
        med = statistics.median(rounds)
        goal, mosix = math.log2(n) + 2, (1 + math.log(2)) * math.log2(n)
        print(f"{n:>6} {len(spreads[n]):>6} {len(rounds):>5} {med:>7.1f} {min(rounds):>4.0f} "
              f"{max(rounds):>4.0f} {goal:>8.1f} {med / goal:>6.2f} {mosix:>13.1f} "
              f"{med / mosix:>6.2f} {statistics.fmean(s.exchanges for s in spreads[n]):>12.2f} "
              f"{sum(s.seconds for s in spreads[n]):>6.0f}")
    print()
    print("(b) steady state, default config (window 20, interval 1 s, stale after 5 s x max(1, "
          "N/window)), random loads")
    print(f"{'N':>6} {'warmup':>6} {'age held':>8} {'window':>6} {'oldest':>6} "
          f"{'stale lim':>9} {'not up':>7} {'exch/node/rd':>12} {'win∋light5%':>11} "
          f"{'random win':>10} {'ratio':>6} {'view∋light up':>13} {'sec':>5}")
    for n in sizes:
        s = steadies[n]
        print(f"{n:>6} {s.warmup:>5}{'*' if s.short else ' '} {s.age_held:>8.1f} "
              f"{s.age_window:>6.1f} {s.age_max:>6.0f} {s.stale_limit:>9.1f} "
              f"{s.not_up:>7.2%} {s.exchanges:>12.2f} {s.window_has_light:>11.1%} "
              f"{s.random_window_has_light:>10.1%} "
              f"{s.window_has_light / s.random_window_has_light:>6.2f} "
              f"{s.view_has_light_up:>13.1%} {s.seconds:>5.0f}")
    print("    ages in rounds: medians of the entries a node holds and of those in its window; "
          "oldest held entry seen")
    print("    not up: entries seen suspect, down or left although their node is up (must be 0)")
    print("    exch/node/rd: exchanges started per node per round (above 1: stale exchanges)")
    if any(steadies[n].short for n in sizes):
        print("    * warm-up shorter than 1.25 x the stale limit (pure Python cost): no stale "
              "exchanges yet")
    print()
    print("(c) bytes sent per node per round, every message, as serialized GossipMessages")
    print(f"{'N':>6} | {'window 20:':>10} {'B/node/rd':>9} {'msgs/node/rd':>12} | "
          f"{'full window (a):':>16} {'B/node/rd':>10}")
    for n in sizes:
        s = steadies[n]
        f_bytes = statistics.fmean(x.bytes for x in spreads[n])
        print(f"{n:>6} | {'':>10} {s.bytes:>9.0f} {s.messages:>12.2f} | {'':>16} {f_bytes:>10.0f}")
    print()
    print("(d) membership, default config: a node killed (kill -9), then another leaving "
          "gracefully; rounds until 50/99/100% of live nodes see it")
    print("    down (left); medians over trials. false downs: deaths declared of live nodes; "
          "false susp.: suspicions of live nodes (refuted)")
    print(f"{'N':>6} {'loss':>5} {'trials':>6} | {'1st suspect':>11} {'down 50%':>8} {'99%':>5} "
          f"{'100%':>5} {'max 99%':>7} | {'left 50%':>8} {'99%':>5} {'100%':>5} | "
          f"{'false downs':>11} {'false susp.':>11} | {'B/node/rd quiet':>15} {'news':>6} "
          f"{'peak':>6} | {'sec':>5}")
    fits: dict[tuple[str, float], list[tuple[int, float]]] = {}
    for loss in losses:
        for n in sizes:
            runs = swim[n, loss]

            def med(xs: list[float]) -> float:
                return statistics.median(xs)

            d = {s: med([r.death.get(s, math.inf) for r in runs]) for s in SHARES}
            lv = {s: med([r.leave.get(s, math.inf) for r in runs]) for s in SHARES}
            fits.setdefault(("down", loss), []).append((n, d[0.99]))
            fits.setdefault(("left", loss), []).append((n, lv[0.99]))
            print(f"{n:>6} {loss:>5.0%} {len(runs):>6} | {med([r.suspect for r in runs]):>11.1f} "
                  f"{d[0.5]:>8.1f} {d[0.99]:>5.1f} {d[1.0]:>5.1f} "
                  f"{max(r.death.get(0.99, math.inf) for r in runs):>7.0f} | "
                  f"{lv[0.5]:>8.1f} {lv[0.99]:>5.1f} {lv[1.0]:>5.1f} | "
                  f"{sum(r.false_downs for r in runs):>11} {sum(r.false_suspects for r in runs):>11} | "
                  f"{med([r.bytes_quiet for r in runs]):>15.0f} {med([r.bytes_news for r in runs]):>6.0f} "
                  f"{max(r.bytes_peak for r in runs):>6.0f} | {sum(r.seconds for r in runs):>5.0f}")
    print("    rounds count from the kill (the leave); 1 round = 1 s at the default interval")
    print()
    print(f"    model: rounds until 99% know = a + b·log2 N, least squares over N = "
          f"{', '.join(map(str, sizes))}")
    print(f"{'event':>6} {'loss':>5} {'a':>6} {'b':>6} | {'error on the fitted sizes (rounds)':>36} | "
          f"{'N=65,535':>8}")
    for (event, loss), points in fits.items():
        if len(points) < 2 or any(math.isinf(y) for _, y in points):
            continue
        a, b = fit_log2(points)
        errors = " ".join(f"{y - (a + b * math.log2(n)):+.1f}" for n, y in points)
        print(f"{event:>6} {loss:>5.0%} {a:>6.2f} {b:>6.2f} | {errors:>36} | "
              f"{a + b * math.log2(MODEL_N):>8.1f}")
    print()
    print(f"(e) memory per member, one view of {4096 if args.quick else MODEL_N} members decoded "
          f"from the wire (tracemalloc): {per_member:.0f} B, of which the record, index and "
          f"address map {per_record:.0f} B")
    print()
    print(f"total {time.perf_counter() - started:.0f} s on {args.jobs} worker(s)")


if __name__ == "__main__":
    main()
