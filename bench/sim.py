"""Placement and migration benchmark: the opportunity-cost paper's cluster model, driving
the real ``mosixd.core.policy.Placement`` and ``mosixd.core.rebalance.Rebalancer``.

The model (after Amir, Awerbuch, Barak, Borgstrom and Keren, IEEE TPDS 11(7), 2000):

* A scenario is a cluster of 3 to 12 machines, each with 1, 2 or 4 CPUs, a CPU speed
  between 0.5 and 2 times the standard one (log-uniform) and 2, 4 or 8 GiB of memory.
* Jobs arrive as a Poisson stream for ``ARRIVAL_WINDOW`` seconds, at a rate that offers
  the cluster a CPU utilisation drawn between ``LOAD_MIN`` and ``LOAD_MAX``; then the
  cluster drains. A job's work (seconds on one standard CPU) is heavy-tailed, Pareto with
  P(work > t) ~ 1/t (Harchol-Balter and Downey's observation on process lifetimes)
  between ``WORK_MIN`` and ``WORK_MAX``; its memory is log-uniform between 32 MiB and
  2 GiB. Every job is CPU-bound and single-threaded.
* A machine shares its CPUs equally among the jobs it runs: each gets ``speed *
  min(1, cpus / jobs)``. When the memory of its jobs exceeds its memory it thrashes, and
  every job there gets a tenth of that.
* A move freezes the job for ``memory / BANDWIDTH + FREEZE`` seconds (its whole memory
  crosses a 1 Gb/s link, as a process image would); during that time it runs nowhere,
  still holds its memory at the source, and the target already counts it (tasks and
  memory) in its reports, as a node counts a task from the moment it accepts it. The
  target checks each move with the daemon's ``policy.admit`` and may refuse it.

The paper does not publish its parameters; the load is set so that placement alone, the
paper's static "Enhanced PVM" opportunity-cost strategy, which over-commits memory when it
must (``--overcommit`` below), averages a slowdown near the paper's 9.8 (offered load 1 to 2
for 150 s). Lighter loads can be run with ``--load``.

Strategies, all run on the same scenarios (same seeds), every one knowing each job's
memory at arrival and the exact state of every machine:

1. ``migration``: ``Placement`` at arrival, and on every machine, once a second,
   ``Rebalancer.decide`` on the same view of the cluster; the moves are carried out
   (unless the target refuses), and reported back with ``moved``/``failed``.
2. ``placement``: the same placement, no migration.
3. ``greedy`` (E-PVM-like): the machine where the job would run fastest now, i.e. the
   lowest ``max(1, (jobs + 1) / cpus) / speed``, among those with room for its memory
   (any machine if none has, over-committing it).
4. ``greedy-hold``: greedy's choice, but a job no machine has room for waits in the queue
   as ours does: the same rule for memory with least-loaded ranking, which tells what the
   ranking is worth apart from the holding.
5. ``random``: a machine drawn uniformly.
6. ``round-robin``: the machines in turn.

When no machine has room for a job's memory, ``Placement`` refuses (``NoRoom``), with
``fits_later`` set: the job fits once memory frees. The daemon then keeps the task in its
home's queue (``mosrun -q``), and so does the model: the job joins the real
``LaunchQueue``, whose head tries again once a second and, when it starts, lets the next
try at once; a job arriving meanwhile is placed at once if it fits. Its time in the queue
counts in its slowdown. With ``--overcommit`` the job instead goes where its opportunity
cost (``policy.node_cost``, over-commitment priced in) is least, the paper's rule without
a hard memory limit, so that every job starts the moment it arrives; that is how this model
ran before the queue, and the figures in BENCHMARKS.md say which mode they come from.

Slowdown of a job: its time in the system (arrival to completion) over the time it would
take alone on the fastest machine of its cluster. The figure per strategy is the mean over
the scenarios of the mean over the scenario's jobs (the paper's "average slowdown").

Run from the repository root:

    python -m bench.sim                    # 3000 scenarios, two worker processes
    python -m bench.sim --quick            # 100 scenarios
    python -m bench.sim --scenarios 500 --load 0.5 1.0 --workers 1
    python -m bench.sim --quick --set residency_factor=2   # a policy parameter changed
    python -m bench.sim --quick --set herd_control=0       # without the herd rule
    python -m bench.sim --quick --link 1e13 --freeze 0 --set min_residency=0  # free moves
    python -m bench.sim --quick --overcommit   # over-commit memory by the paper's rule
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from mosixd.core.gossip import NodeState, NodeView
from mosixd.core.launchqueue import LaunchQueue
from mosixd.core.loadvector import LoadVector
from mosixd.core.policy import MIB, JobRequest, NoRoom, Placement, admit, node_cost
from mosixd.core.rebalance import MoveDecision, Rebalancer, RunningTask

ARRIVAL_WINDOW = 150.0  # seconds during which jobs arrive
WORK_MIN, WORK_MAX = 2.0, 1000.0  # standard-CPU seconds
MEM_MIN_MB, MEM_MAX_MB = 32, 2048
LOAD_MIN, LOAD_MAX = 1.0, 2.0  # offered CPU utilisation of the cluster while jobs arrive
BANDWIDTH = 125e6  # bytes/s: a 1 Gb/s link
FREEZE = 0.02  # seconds a small task stands still in a move (bench.migration: about 20 ms)
THRASH = 10.0  # a thrashing machine's jobs get this much less CPU
# The daemon decides on migration once a second, and the head of a home's queue tries again
# as often (``mosixd.home.sessions.QUEUE_RETRY``): both happen on the same whole seconds.
TICK = 1.0
PYTHON = "3.11.7"
USER = "user"  # every job of a scenario comes from one user at one home
# --overcommit: our placement places every job at arrival, over-committing memory by the
# paper's rule when no machine has room, instead of holding it in the queue.
OVERCOMMIT = False
# Policy parameters to try other than the defaults (``--set residency_factor=3``).
REBALANCER_OPTIONS: dict[str, float] = {}
PLACEMENT_OPTIONS: dict[str, float] = {}
STRATEGIES = ("migration", "placement", "greedy", "greedy-hold", "random", "round-robin")


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True, slots=True)
class MachineSpec:
    cpus: int
    speed: float
    mem_mb: int


@dataclass(frozen=True, slots=True)
class JobSpec:
    arrival: float
    work: float  # standard-CPU seconds
    mem_mb: int


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    machines: tuple[MachineSpec, ...]
    jobs: tuple[JobSpec, ...]


def pareto_work(rng: random.Random) -> float:
    """P(work > t) proportional to 1/t between WORK_MIN and WORK_MAX (inverse CDF)."""
    return WORK_MIN / (1.0 - rng.random() * (1.0 - WORK_MIN / WORK_MAX))


def mean_work() -> float:
    """Mean of ``pareto_work``: WORK_MIN * ln(WORK_MAX / WORK_MIN) / (1 - WORK_MIN / WORK_MAX)."""
    return WORK_MIN * math.log(WORK_MAX / WORK_MIN) / (1.0 - WORK_MIN / WORK_MAX)


def make_scenario(seed: int) -> Scenario:
    """The cluster and the job stream of scenario ``seed``; the same for every strategy."""
    rng = random.Random(seed)
    machines = tuple(
        MachineSpec(cpus=rng.choice((1, 1, 2, 2, 4)),
                    speed=math.exp(rng.uniform(math.log(0.5), math.log(2.0))),
                    mem_mb=rng.choice((2048, 4096, 8192)))
        for _ in range(rng.randint(3, 12)))
    capacity = sum(m.cpus * m.speed for m in machines)
    utilisation = rng.uniform(LOAD_MIN, LOAD_MAX)
    rate = utilisation * capacity / mean_work()  # jobs per second
    jobs: list[JobSpec] = []
    t = rng.expovariate(rate)
    while t < ARRIVAL_WINDOW:
        mem = int(math.exp(rng.uniform(math.log(MEM_MIN_MB), math.log(MEM_MAX_MB))))
        jobs.append(JobSpec(t, pareto_work(rng), mem))
        t += rng.expovariate(rate)
    return Scenario(seed, machines, tuple(jobs))


# ------------------------------------------------------------------ the cluster model


@dataclass(slots=True)
class Job:
    spec: JobSpec
    id: str
    machine: int = -1
    mark: float = 0.0  # finishes when its machine's service counter reaches this
    remaining: float = 0.0  # standard-CPU seconds left while it is frozen
    resident_since: float = 0.0
    moving: MoveDecision | None = None
    version: int = 0  # bumps when it leaves a heap (lazy deletion)


@dataclass(slots=True)
class Machine:
    """One machine; ``service`` counts the standard-CPU seconds one job there has had."""

    index: int
    spec: MachineSpec
    id: str
    service: float = 0.0
    rate: float = 0.0
    jobs: dict[str, Job] = field(default_factory=dict)  # all, frozen ones included
    running: int = 0  # jobs that share the CPUs (not frozen)
    mem_used: int = 0  # MB
    incoming: int = 0  # jobs on their way here (accepted, counted in its report)
    incoming_mem: int = 0  # MB
    heap: list[tuple[float, int, str]] = field(default_factory=list)

    def update_rate(self) -> None:
        if self.running == 0:
            self.rate = 0.0
            return
        cpus, n = self.spec.cpus, self.running
        rate = self.spec.speed * (1.0 if n <= cpus else cpus / n)
        self.rate = rate / THRASH if self.mem_used > self.spec.mem_mb else rate

    def next_completion(self) -> float:
        """Seconds until the next job here finishes (inf if none runs)."""
        heap = self.heap
        while heap:
            mark, version, job_id = heap[0]
            job = self.jobs.get(job_id)
            if job is not None and job.version == version and job.moving is None:
                return max(0.0, (mark - self.service) / self.rate)
            heapq.heappop(heap)
        return math.inf

    def view(self) -> NodeView:
        spec = self.spec
        tasks = len(self.jobs) + self.incoming
        used = self.mem_used + self.incoming_mem
        lv = LoadVector(load=tasks / (spec.cpus * spec.speed), cpus=spec.cpus, speed=spec.speed,
                        mem_total=spec.mem_mb * MIB, mem_free=(spec.mem_mb - used) * MIB,
                        local_tasks=tasks, python=PYTHON)
        return NodeView(self.id, f"{self.id}:7410", NodeState.UP, lv, 0.0, 1, False)


class Sim:
    """An event-driven run of one scenario under one strategy."""

    def __init__(self, scenario: Scenario, strategy: str) -> None:
        self.scenario = scenario
        self.strategy = strategy
        self.now = 0.0
        self.machines = [Machine(i, spec, f"n{i + 1}") for i, spec in enumerate(scenario.machines)]
        self.by_id = {m.id: m for m in self.machines}
        self.fastest = max(spec.speed for spec in scenario.machines)
        self.rng = random.Random(scenario.seed * 7919 + 1)
        self.rr = itertools.cycle(range(len(self.machines)))
        # Views here are exact and current, so a reservation is confirmed by the very next
        # view: no lag to wait out.
        self.placement = Placement(confirm_lag=0.0, **PLACEMENT_OPTIONS)
        self.rebalancers = {
            m.id: Rebalancer(rng=random.Random(scenario.seed * 1_000_003 + m.index),
                             **{"bandwidth_bytes_per_s": BANDWIDTH, "freeze_overhead": FREEZE,
                                "thrash_slowdown": THRASH, "confirm_lag": 0.0, **REBALANCER_OPTIONS})
            for m in self.machines} if strategy == "migration" else {}
        self.arrivals: list[tuple[float, int, Job]] = []  # frozen jobs reaching their target
        self.queue = LaunchQueue()  # jobs held at home until a machine has room
        self.waiting: dict[str, Job] = {}
        self.slowdowns: list[float] = []
        self.moves = 0
        self.refused_moves = 0  # moves the target refused (admit)
        self.refused = 0  # arrivals that found no machine with room for their memory
        self.waited = 0.0  # seconds jobs spent in the queue, all told

    # ---- strategies

    def choose(self, job: Job) -> int | None:
        """The machine ``job`` starts on now, or None to hold it in the queue."""
        if self.strategy in ("migration", "placement"):
            return self._place(job)
        if self.strategy == "greedy":
            return self._greedy(job, memory=True)
        if self.strategy == "greedy-hold":
            best = self._greedy(job, memory=True, anywhere=False)
            return best if best >= 0 else None
        if self.strategy == "random":
            return self.rng.randrange(len(self.machines))
        return next(self.rr)

    def _place(self, job: Job) -> int | None:
        views = [m.view() for m in self.machines]
        self.placement.observe(views, self.now)
        try:
            choice, _ = self.placement.place(
                views, JobRequest(memory_mb=job.spec.mem_mb, python=PYTHON), self.now)
        except NoRoom as no_room:
            if no_room.fits_later and not OVERCOMMIT:
                return None  # as the daemon does with mosrun -q: it waits for room
            # The paper's strategy, which has no hard memory limit, puts it where its
            # opportunity cost is least, over-commitment priced in by the same function.
            a = self.placement.base_for(views)
            memory = job.spec.mem_mb * MIB
            return min(self.machines, key=lambda m: node_cost(
                a, cpu_demand=float(len(m.jobs) + m.incoming),
                capacity=m.spec.cpus * m.spec.speed, job_cpu=1.0, cpus=m.spec.cpus,
                mem_used=float((m.mem_used + m.incoming_mem) * MIB),
                mem_total=float(m.spec.mem_mb * MIB), job_mem=float(memory))).index
        return self.by_id[choice.node_id].index

    def _greedy(self, job: Job, *, memory: bool, anywhere: bool = True) -> int:
        """Where ``job`` runs fastest now, among the machines with room for its memory if
        ``memory``; when none has room, any machine if ``anywhere``, else -1."""
        best, best_time = -1, math.inf
        for m in self.machines:
            if memory and m.mem_used + job.spec.mem_mb > m.spec.mem_mb:
                continue
            per_work = max(1.0, (len(m.jobs) + 1) / m.spec.cpus) / m.spec.speed
            if per_work < best_time:
                best, best_time = m.index, per_work
        if best >= 0 or not anywhere:
            return best
        return self._greedy(job, memory=False)

    # ---- the model

    def _advance(self, until: float) -> None:
        dt = until - self.now
        if dt > 0:
            for m in self.machines:
                if m.rate:
                    m.service += m.rate * dt
        self.now = until

    def _arrive(self, job: Job) -> bool:
        """``job`` arrives at its home: it starts at once, or joins the queue (returns False)."""
        self.refused += all(m.mem_used + m.incoming_mem + job.spec.mem_mb > m.spec.mem_mb
                            for m in self.machines)
        where = self.choose(job)
        if where is None:
            self.queue.join(job.id, USER)
            self.waiting[job.id] = job
            return False
        self._start(self.machines[where], job, job.spec.work)
        return True

    def _retry(self) -> int:
        """The head of the queue tries again; each time one starts, the next tries at once
        (``LaunchQueue``: a big job at the head is not overtaken by the small ones behind
        it). Returns how many started."""
        started = 0
        while (head := self.queue.head()) is not None:
            job = self.waiting[head]
            where = self.choose(job)
            if where is None:
                break
            self.queue.leave(head, started=True)
            del self.waiting[head]
            self.waited += self.now - job.spec.arrival
            self._start(self.machines[where], job, job.spec.work)
            started += 1
        return started

    def _start(self, m: Machine, job: Job, remaining: float) -> None:
        """``job`` starts running on ``m`` (new, or arrived from another machine)."""
        job.machine = m.index
        job.moving = None
        job.resident_since = self.now
        job.mark = m.service + remaining
        job.version += 1
        m.jobs[job.id] = job
        m.running += 1
        m.mem_used += job.spec.mem_mb
        heapq.heappush(m.heap, (job.mark, job.version, job.id))
        m.update_rate()

    def _complete(self, m: Machine) -> None:
        _, _, job_id = heapq.heappop(m.heap)
        job = m.jobs.pop(job_id)
        m.running -= 1
        m.mem_used -= job.spec.mem_mb
        m.update_rate()
        alone = job.spec.work / self.fastest
        self.slowdowns.append((self.now - job.spec.arrival) / alone)

    def _freeze(self, m: Machine, job: Job, decision: MoveDecision) -> None:
        """``job`` stops at a safe point on ``m`` and crosses the link to its target."""
        job.remaining = max(0.0, job.mark - m.service)
        job.moving = decision
        job.version += 1  # its heap entry is void
        m.running -= 1
        m.update_rate()
        target = self.by_id[decision.target]
        target.incoming += 1
        target.incoming_mem += job.spec.mem_mb
        delay = job.spec.mem_mb * MIB / BANDWIDTH + FREEZE
        heapq.heappush(self.arrivals, (self.now + delay, int(job.id[1:]), job))
        self.moves += 1

    def _land(self, job: Job) -> None:
        source = self.machines[job.machine]
        decision = job.moving
        assert decision is not None
        del source.jobs[job.id]
        source.mem_used -= job.spec.mem_mb
        source.update_rate()
        target = self.by_id[decision.target]
        target.incoming -= 1
        target.incoming_mem -= job.spec.mem_mb
        self._start(target, job, job.remaining)
        self.rebalancers[source.id].moved(decision, self.now)

    def _tick(self) -> None:
        """Every machine's daemon looks at the same view and decides; then moves start."""
        views = [m.view() for m in self.machines]
        decisions: list[tuple[Machine, MoveDecision]] = []
        now = self.now
        for m in self.machines:
            if not m.jobs:
                continue
            tasks = [RunningTask(job.id, 1.0, job.spec.mem_mb, now - job.spec.arrival,
                                 job.spec.mem_mb * MIB, job.resident_since)
                     for job in m.jobs.values()]
            decision = self.rebalancers[m.id].decide(m.id, views, tasks, now)
            if decision is not None:
                decisions.append((m, decision))
        for m, decision in decisions:
            # The target admits or refuses each move with the daemon's own check, on its
            # report including the moves it has already accepted.
            job = m.jobs[decision.task_id]
            target = self.by_id[decision.target]
            why = admit(target.view().load, JobRequest(memory_mb=job.spec.mem_mb, python=PYTHON),
                        blocked=False, starting=0)
            if why is None:
                self._freeze(m, job, decision)
            else:
                self.rebalancers[m.id].failed(decision, now)
                self.refused_moves += 1

    def run(self) -> float:
        """Mean slowdown of the scenario's jobs."""
        pending = [Job(spec, f"j{i}") for i, spec in enumerate(self.scenario.jobs)]
        pending.reverse()  # pop() from the end: earliest first
        migrate = self.strategy == "migration"
        next_tick = TICK
        live = 0  # jobs started and not finished (frozen ones included)
        while pending or live or self.waiting:
            # Ticks fall on whole seconds, while the balancers have jobs to look at or the
            # queue has jobs to retry; none while the cluster is idle.
            ticking = (migrate and live) or self.waiting
            t_arrive = pending[-1].spec.arrival if pending else math.inf
            t_land = self.arrivals[0][0] if self.arrivals else math.inf
            soonest, first = math.inf, None
            for m in self.machines:
                if m.running:
                    t = self.now + m.next_completion()
                    if t < soonest:
                        soonest, first = t, m
            t_tick = next_tick if ticking else math.inf
            t = min(t_arrive, t_land, soonest, t_tick)
            self._advance(t)
            if t == soonest and first is not None:
                self._complete(first)
                live -= 1
            elif t == t_land:
                _, _, job = heapq.heappop(self.arrivals)
                self._land(job)
            elif t == t_arrive:
                if not ticking:
                    next_tick = math.floor(t / TICK) * TICK + TICK
                live += self._arrive(pending.pop())
            else:
                if self.waiting:
                    live += self._retry()
                if migrate and live:
                    self._tick()
                next_tick = t + TICK
        return statistics.fmean(self.slowdowns)


# ------------------------------------------------------------------ the benchmark


@dataclass(frozen=True, slots=True)
class Result:
    seed: int
    machines: int
    jobs: int
    slowdown: dict[str, float]
    moves: int  # by migration
    refused: int  # placement alone: arrivals with no machine that had room for them
    waited: float  # placement alone: seconds in the queue, all told


def run_scenario(seed: int) -> Result:
    """Every strategy on scenario ``seed``."""
    scenario = make_scenario(seed)
    slowdown: dict[str, float] = {}
    moves = refused = 0
    waited = 0.0
    for strategy in STRATEGIES:
        sim = Sim(scenario, strategy)
        slowdown[strategy] = sim.run()
        if strategy == "migration":
            moves = sim.moves
        elif strategy == "placement":
            refused, waited = sim.refused, sim.waited
    return Result(seed, len(scenario.machines), len(scenario.jobs), slowdown, moves, refused,
                  waited)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scenarios and print the table."""
    global LOAD_MIN, LOAD_MAX, ARRIVAL_WINDOW, BANDWIDTH, FREEZE, OVERCOMMIT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="100 scenarios")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=1, help="seed of the first scenario")
    parser.add_argument("--load", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=(LOAD_MIN, LOAD_MAX),
                        help="range of the offered utilisation while jobs arrive")
    parser.add_argument("--window", type=float, default=ARRIVAL_WINDOW,
                        help="seconds during which jobs arrive")
    parser.add_argument("--link", type=float, default=BANDWIDTH, metavar="BYTES_PER_S",
                        help="bandwidth a move's state crosses in the model")
    parser.add_argument("--freeze", type=float, default=FREEZE, metavar="SECONDS",
                        help="fixed stop of a move in the model, besides the transfer")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a Rebalancer parameter other than its default (repeatable)")
    parser.add_argument("--overcommit", action="store_true",
                        help="our placement starts every job at arrival, over-committing memory "
                             "by the paper's rule when no machine has room, instead of holding it")
    args = parser.parse_args(argv)
    for setting in args.set:
        name, _, value = setting.partition("=")
        REBALANCER_OPTIONS[name] = float(value)
    # Module constants, so that worker processes (fork) see them too.
    LOAD_MIN, LOAD_MAX = args.load
    ARRIVAL_WINDOW = args.window
    BANDWIDTH, FREEZE = args.link, args.freeze
    OVERCOMMIT = args.overcommit
    count = 100 if args.quick else args.scenarios
    seeds = range(args.seed, args.seed + count)
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(run_scenario, seeds, chunksize=max(1, count // 100)))
    else:
        results = [run_scenario(seed) for seed in seeds]
    elapsed = time.perf_counter() - started

    mean = {s: statistics.fmean(r.slowdown[s] for r in results) for s in STRATEGIES}
    jobs = sum(r.jobs for r in results)
    print(f"{count} scenarios (seeds {args.seed}..{args.seed + count - 1}), offered load "
          f"{LOAD_MIN:g}-{LOAD_MAX:g} for {ARRIVAL_WINDOW:g} s; "
          f"{statistics.fmean(r.machines for r in results):.1f} machines and "
          f"{jobs / count:.0f} jobs per scenario on average; {elapsed:.0f} s with "
          f"{args.workers} worker(s)" + ("; --overcommit" if OVERCOMMIT else ""))
    print(f"{'strategy':<12} {'mean slowdown':>14} {'median':>8}")
    for s in STRATEGIES:
        median = statistics.median(r.slowdown[s] for r in results)
        print(f"{s:<12} {mean[s]:>14.3f} {median:>8.3f}")
    wins = sum(r.slowdown["migration"] < r.slowdown["placement"] for r in results)
    paired = statistics.geometric_mean(
        [r.slowdown["migration"] / r.slowdown["placement"] for r in results])
    print(f"migration: {sum(r.moves for r in results) / jobs:.3f} moves per job; better than "
          f"placement alone in {wins}/{count} scenarios; geometric mean of the per-scenario "
          f"ratio {paired:.3f}")
    refused = sum(r.refused for r in results)
    if OVERCOMMIT:
        print(f"placement: {refused} of {jobs} jobs found no machine with room for their "
              f"memory (placed by opportunity cost, over-committed)")
    else:
        waited = sum(r.waited for r in results) / max(1, refused)
        print(f"placement: {refused} of {jobs} jobs found no machine with room for their "
              f"memory and waited in the queue, {waited:.1f} s on average")
    ratios = [
        ("migration / placement", "migration", "placement", 0.85, 8.557 / 9.795),
        ("migration / round-robin", "migration", "round-robin", 0.55, 1 / 1.68),
        ("migration / greedy", "migration", "greedy", None, None),
        ("placement / greedy", "placement", "greedy", 0.97, None),
        ("placement / greedy-hold", "placement", "greedy-hold", None, None),
    ]
    print(f"{'ratio of mean slowdowns':<26} {'value':>7} {'goal':>7} {'paper':>6}")
    for name, a, b, goal, paper in ratios:
        goal_s = f"<={goal:.2f}" if goal else ""
        paper_s = f"{paper:.2f}" if paper else ""
        print(f"{name:<26} {mean[a] / mean[b]:>7.3f} {goal_s:>7} {paper_s:>6}")


if __name__ == "__main__":
    main()
