"""Migration decisions: which running task should move, and where. Sans-IO.

The daemon calls ``Rebalancer.decide`` about once a second with its gossip view and the
tasks it runs, and gets back at most one ``MoveDecision``. It reports how the move went
with ``moved`` or ``failed``. Nothing here reads a clock, the network or the process
table, so a simulator drives the same class as the daemon.

A task ``t`` on this node ``h`` moves to another node ``m`` when all of these hold:

1. ``t`` can move: it has safe points, it is not locked to the node (``mosrun -L``), it is
   not already moving, and it has been on ``h`` at least ``min_residency`` seconds and at
   least ``residency_factor`` (4) times what moving it costs (a task that just arrived
   cannot be sent on at once, and a big one spends at most a fifth of its time in transit;
   a factor of 2 let big tasks hop on after every shift of load and lost more in transit
   than they gained, in ``bench.sim``).
2. ``m`` could take it as a new job: up, same major.minor Python, room for its memory
   after the moves this node has already sent there (``Placement.rank``). Among those,
   the target is the one where its marginal opportunity cost is lowest, as for placement.
3. One of the two balancing rules holds, both counting the task *on* the target, so that
   the move would not look worth undoing right after (hysteresis):

   a. opportunity cost (Amir et al., IEEE TPDS 2000): its marginal cost on ``m`` is below
      ``reassign_ratio`` (one half) of its marginal cost on ``h``, with the same
      ``node_cost`` the placement uses (each CPU priced on its own);
   b. MOSIX: ``load(m) + stability * load of t on m < load(h)``, loads normalised by
      capacity, ``stability`` 1.3.

4. It pays: the expected remaining time of a task is taken to be its age (process
   lifetimes are heavy-tailed: Harchol-Balter and Downey), so moving saves about
   ``age * (1 - rate here / rate there)`` seconds, where a task's rate is the CPU speed
   times its equal share of the CPUs (divided by ``thrash_slowdown`` where memory is
   over-committed). Where memory is over-committed, a move that ends it is also credited
   with what the other tasks here gain: their ages times ``1 - 1 / thrash_slowdown``. The
   gain must exceed ``gain_margin`` times the migration cost, ``state_bytes / bandwidth +
   freeze_overhead``.
5. No herd: the other loaded nodes see the same idle node at the same time. Each counts
   the nodes its view shows would also want to send there (itself included) and the
   free CPUs the target has, and sends with probability ``free CPUs / senders`` (at most
   1), so a newly idle node receives about as many tasks per round as it has room for.
   Moves this node sent count on their target until gossip confirms them (the same
   reservations as ``Placement``), and a target that refused or failed a move is left
   alone for ``cooldown`` seconds.

Among the tasks that pass, the one with the largest expected net gain moves; if the herd
rule holds it back, nothing moves this round. The rules are checked cheapest first: a
bound on each task's gain from CPU figures alone (a memory term only adds to a cost) rules
most tasks out before the full ranking is asked for.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from mosixd.core.gossip import NodeState, NodeView
from mosixd.core.loadvector import LoadVector
from mosixd.core.policy import JobRequest, NoRoom, Placement, cpu_demand, node_cost

OBSERVED_MIN_BYTES = 1 << 20  # smaller transfers measure latency, not bandwidth


@dataclass(frozen=True, slots=True)
class RunningTask:
    """What the node knows about one task it runs, for migration decisions."""

    task_id: str
    cpu: float = 1.0  # demand in standard CPUs (about 1 for a CPU-bound task)
    memory_mb: int = 0  # resident memory; 0: unknown, policy.DEFAULT_MEMORY_MB assumed
    age: float = 0.0  # seconds since it started (on any node)
    state_bytes: int = 0  # size of its checkpoint, estimated
    resident_since: float = 0.0  # when it started or arrived on this node (local clock)
    locked: bool = False  # mosrun -L: never moves by itself
    migratable: bool = True  # has safe points


@dataclass(frozen=True, slots=True)
class MoveDecision:
    """Move ``task_id`` to ``target``; ``gain``: expected seconds saved, net of the move."""

    task_id: str
    target: str
    reason: str
    gain: float


@dataclass(frozen=True, slots=True)
class _Outgoing:
    target: str
    job: JobRequest  # what the task takes of CPU and memory
    made: float


@dataclass(frozen=True, slots=True)
class _Here:
    load: LoadVector  # this node's report
    demand: float  # standard CPUs, without the moves under way
    mem_used: float  # bytes, likewise


def task_rate(lv: LoadVector, demand: float, mem_used: float, thrash_slowdown: float) -> float:
    """Speed, in standard CPUs, of one CPU-bound task on a node with ``demand`` standard CPUs
    of demand (the task included): its equal share of the CPUs, at most one whole CPU,
    divided by ``thrash_slowdown`` when memory is over-committed."""
    share = 1.0 if demand <= lv.cpus else lv.cpus / demand
    rate = lv.speed * share
    if lv.mem_total > 0 and mem_used > lv.mem_total:
        rate /= thrash_slowdown
    return rate


class Rebalancer:
    """Migration decisions of one node; see the module docstring for the rules."""

    def __init__(self, *, min_residency: float = 3.0, residency_factor: float = 4.0,
                 stability: float = 1.3,
                 reassign_ratio: float = 0.5, bandwidth_bytes_per_s: float = 125e6,
                 freeze_overhead: float = 0.02, gain_margin: float = 1.0,
                 thrash_slowdown: float = 10.0, cooldown: float = 10.0,
                 confirm_lag: float = 2.0, reservation_ttl: float = 30.0,
                 base: float | None = None, rng: random.Random | None = None,
                 herd_control: bool = True) -> None:
        """``min_residency``: seconds a task stays on a node before it may leave, and
        ``residency_factor``: at least this many times the cost of moving it.
        ``stability``: MOSIX's margin (the task's load counts this much on the target).
        ``reassign_ratio``: a task moves when its cost there is below this share of its cost
        here. ``bandwidth_bytes_per_s`` and ``freeze_overhead`` (seconds): the migration cost
        model; the bandwidth is a first guess (a 1 Gb/s link) that ``observe_transfer``
        replaces with what moves measure, and the freeze is what ``bench.migration`` measures
        for a small state (the target's interpreter is started before the task stops). ``gain_margin``: how many times the migration cost the expected gain must be.
        ``thrash_slowdown``: how much slower a task runs where memory is over-committed.
        ``cooldown``: seconds a target that failed a move is not tried again.
        ``confirm_lag``/``reservation_ttl``: as for ``Placement``. ``base``: a fixed cost
        base. ``rng``: the randomness of the herd rule (seed it for reproducible runs).
        ``herd_control``: False turns rule 5 off (for ``bench.sim`` to measure what it costs).
        """
        if stability < 1.0:
            raise ValueError("stability must be at least 1")
        if not 0.0 < reassign_ratio < 1.0:
            raise ValueError("reassign_ratio must be between 0 and 1")
        if bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth must be positive")
        self.min_residency = min_residency
        self.residency_factor = residency_factor
        self.stability = stability
        self.reassign_ratio = reassign_ratio
        self.bandwidth = bandwidth_bytes_per_s
        self.freeze_overhead = freeze_overhead
        self.gain_margin = gain_margin
        self.thrash_slowdown = thrash_slowdown
        self.cooldown = cooldown
        self._placement = Placement(reservation_ttl=reservation_ttl, confirm_lag=confirm_lag,
                                    base=base)
        self._rng = rng or random.Random()
        self.herd_control = herd_control
        self._outgoing: dict[str, _Outgoing] = {}  # task id -> the move under way
        self._target_cool: dict[str, float] = {}  # target -> until when it is left alone
        self._task_cool: dict[str, float] = {}  # task id -> until when it stays put

    # ---- the decision ---------------------------------------------------------------------

    def observe_transfer(self, size: int, seconds: float) -> None:
        """A move streamed ``size`` bytes of checkpoint in ``seconds``: learn the bandwidth.

        Transfers under 1 MiB say more about latency than bandwidth and are ignored; the
        estimate moves a third of the way to each new measurement, so one slow move on a
        busy link does not swing it.
        """
        if size < OBSERVED_MIN_BYTES or seconds <= 0:
            return
        rate = size / seconds
        self.bandwidth += (rate - self.bandwidth) / 3.0

    def migration_cost(self, task: RunningTask) -> float:
        """Seconds a move of ``task`` costs: its state over the link, plus the freeze."""
        return task.state_bytes / self.bandwidth + self.freeze_overhead

    def residency(self, task: RunningTask) -> float:
        """Seconds ``task`` stays on a node before it may leave: ``min_residency``, and at
        least ``residency_factor`` times what moving it costs, so that a task with a big
        state cannot spend most of its life in transit."""
        return max(self.min_residency, self.residency_factor * self.migration_cost(task))

    def decide(self, own_id: str, views: list[NodeView], tasks: list[RunningTask],
               now: float) -> MoveDecision | None:
        """At most one move for this node at ``now``; None when nothing should move.

        ``views``: the gossip view (this node's own entry included, under ``own_id``);
        ``tasks``: the tasks running here. A returned move counts on its target at once;
        report its end with ``moved`` or ``failed``.
        """
        self._expire(views, now)
        own = next((v for v in views if v.id == own_id), None)
        if own is None or own.load.capacity <= 0:
            return None
        candidates = [t for t in tasks if t.migratable and not t.locked
                      and t.task_id not in self._outgoing
                      and now - t.resident_since >= self.residency(t)
                      and self._task_cool.get(t.task_id, -math.inf) <= now]
        if not candidates:
            return None
        lv = own.load
        # Moves under way still show in this node's report until their task is gone.
        leaving = [self._outgoing[t.task_id] for t in tasks if t.task_id in self._outgoing]
        staying = sum(t.cpu for t in tasks if t.task_id not in self._outgoing)
        here = _Here(lv, max(cpu_demand(lv) - sum(o.job.cpu for o in leaving), staying),
                     (lv.mem_total - lv.mem_free - sum(o.job.memory_bytes for o in leaving))
                     if lv.mem_total > 0 else 0.0)
        a = self._placement.base_for(views)
        moving = self._moving()
        held = self._placement.held(now)
        for node_id, (cpu, mem) in moving.items():
            cpu_held, mem_held = held.get(node_id, (0.0, 0))
            held[node_id] = (cpu_held + cpu, mem_held + mem)
        exclude = {own_id} | {n for n, until in self._target_cool.items() if until > now}
        # Targets as the CPU sees them; ``rank`` still has the last word on who is eligible.
        targets = {v.id: (v.load, cpu_demand(v.load) + held.get(v.id, (0.0, 0))[0])
                   for v in views if v.id not in exclude and v.state is NodeState.UP
                   and v.load.capacity > 0}
        if not targets:
            return None

        # Bound first: from CPU figures alone, what each task could gain at best (a memory
        # term only adds to a cost, thrashing only slows). Then check the most promising
        # tasks fully, best bound first, until no bound can beat the best move found.
        own_load = here.demand / lv.capacity
        # Where memory is over-committed every task here runs ``thrash_slowdown`` times
        # slower; a move that ends it speeds up all the others too, by about their expected
        # remaining time (their age) times (1 - 1 / thrash_slowdown).
        thrashing = lv.mem_total > 0 and here.mem_used > lv.mem_total
        relief = (1.0 - 1.0 / self.thrash_slowdown) if thrashing else 0.0
        staying_age = sum(t.age for t in tasks if t.task_id not in self._outgoing) * relief
        # Per CPU demand (nearly always one value): this node's rate, and the targets where
        # a task would run faster, fastest first, with their free memory.
        by_cpu: dict[float, tuple[float, list[tuple[float, str, LoadVector, float, float]]]] = {}
        cpu_costs: dict[tuple[str, float], float] = {}
        bounds: list[tuple[float, str, RunningTask, float, float, float]] = []
        for task in candidates:
            if task.cpu not in by_cpu:
                rate_here = task_rate(lv, max(here.demand, task.cpu), here.mem_used,
                                      self.thrash_slowdown)
                by_cpu[task.cpu] = (rate_here, sorted(
                    ((rate, node_id, tv, t_demand,
                      tv.mem_free - held.get(node_id, (0.0, 0))[1] if tv.mem_total > 0
                      else math.inf)
                     for node_id, (tv, t_demand) in targets.items()
                     if (rate := task_rate(tv, t_demand + task.cpu, 0.0,
                                           self.thrash_slowdown)) > rate_here),
                    key=lambda f: -f[0]))
            rate_here, faster = by_cpu[task.cpu]
            if not faster:
                continue
            memory = JobRequest(memory_mb=task.memory_mb).memory_bytes
            bonus = (staying_age - task.age * relief
                     if thrashing and here.mem_used - memory <= lv.mem_total else 0.0)
            cost_here = -1.0  # only worked out when the load rule does not settle it
            best_rate = 0.0
            for rate, node_id, tv, t_demand, free in faster:
                if free < memory:
                    continue
                if (t_demand + self.stability * task.cpu) / tv.capacity >= own_load:
                    if cost_here < 0.0:
                        cost_here = self._cost_here(task, here, a)
                    cost = cpu_costs.get((node_id, task.cpu))
                    if cost is None:
                        cost = cpu_costs[node_id, task.cpu] = node_cost(
                            a, cpu_demand=t_demand, capacity=tv.capacity, job_cpu=task.cpu,
                            cpus=tv.cpus)
                    if cost >= self.reassign_ratio * cost_here:
                        continue
                best_rate = rate
                break
            if best_rate <= rate_here:
                continue
            move_cost = self.migration_cost(task)
            bound = task.age * (1.0 - rate_here / best_rate) + bonus
            if bound > self.gain_margin * move_cost:
                if cost_here < 0.0:
                    cost_here = self._cost_here(task, here, a)
                bounds.append((bound - move_cost, task.task_id, task, cost_here, rate_here,
                               bonus))
        bounds.sort(key=lambda b: (-b[0], b[1]))
        best: MoveDecision | None = None
        for bound, _, task, cost_here, rate_here, bonus in bounds:
            if best is not None and best.gain >= bound:
                break
            option = self._best_move(task, here, cost_here, rate_here, bonus, views, targets,
                                     held, moving, exclude, now)
            if option is not None and (best is None or option.gain > best.gain):
                best = option
        if best is None or (self.herd_control and not self._herd_allows(
                own_id, best.target, targets[best.target], views, a)):
            return None
        self._record(best, next(t for t in candidates if t.task_id == best.task_id), now)
        return best

    def _cost_here(self, task: RunningTask, here: _Here, a: float) -> float:
        """What ``task`` pays here: the cost it adds on top of everything else on this node."""
        lv = here.load
        memory = JobRequest(memory_mb=task.memory_mb).memory_bytes
        return node_cost(a, cpu_demand=max(0.0, here.demand - task.cpu), capacity=lv.capacity,
                         job_cpu=task.cpu, cpus=lv.cpus, mem_used=max(0.0, here.mem_used - memory),
                         mem_total=lv.mem_total, job_mem=memory)

    def _best_move(self, task: RunningTask, here: _Here, cost_here: float, rate_here: float,
                   bonus: float, views: list[NodeView], targets: dict[str, tuple[LoadVector, float]],
                   held: dict[str, tuple[float, int]], moving: dict[str, tuple[float, int]],
                   exclude: set[str], now: float) -> MoveDecision | None:
        """The first target, cheapest first, that passes the rules for ``task``."""
        lv = here.load
        job = JobRequest(memory_mb=task.memory_mb, python=lv.python, cpu=task.cpu)
        memory = job.memory_bytes
        own_load = here.demand / lv.capacity
        move_cost = self.migration_cost(task)
        try:
            choices = self._placement.rank(views, job, now, exclude=exclude, extra=moving)
        except NoRoom:
            return None
        for choice in choices:
            tv, t_demand = targets[choice.node_id]
            by_cost = choice.cost < self.reassign_ratio * cost_here
            by_load = (t_demand + self.stability * task.cpu) / tv.capacity < own_load
            if not (by_cost or by_load):
                continue
            t_used = tv.mem_total - tv.mem_free + held.get(choice.node_id, (0.0, 0))[1] + memory
            rate_there = task_rate(tv, t_demand + task.cpu, t_used, self.thrash_slowdown)
            gross = task.age * (1.0 - rate_here / rate_there) + bonus
            if gross <= self.gain_margin * move_cost:
                continue
            reason = (f"cost {choice.cost:.3g} there < {self.reassign_ratio:g} x "
                      f"{cost_here:.3g} here" if by_cost else
                      f"load {t_demand / tv.capacity:.2f} + {self.stability:g} x "
                      f"{task.cpu / tv.capacity:.2f} there < {own_load:.2f} here")
            return MoveDecision(task.task_id, choice.node_id, reason, gross - move_cost)
        return None

    def _wants(self, lv: LoadVector, demand: float, tv: LoadVector, t_demand: float,
               a: float) -> bool:
        """Would a node like ``lv`` (``demand``) send a standard task to ``tv``?"""
        if (t_demand + self.stability) / tv.capacity < demand / lv.capacity:
            return True
        there = node_cost(a, cpu_demand=t_demand, capacity=tv.capacity, job_cpu=1.0, cpus=tv.cpus)
        here = node_cost(a, cpu_demand=max(0.0, demand - 1.0), capacity=lv.capacity, job_cpu=1.0,
                         cpus=lv.cpus)
        return there < self.reassign_ratio * here

    def _herd_allows(self, own_id: str, target: str, target_cpu: tuple[LoadVector, float],
                     views: list[NodeView], a: float) -> bool:
        """Thin out the senders to ``target``: go with probability free CPUs / senders."""
        tv, t_demand = target_cpu
        senders = 1  # this node
        for v in views:
            if (v.id in (own_id, target) or v.state is not NodeState.UP
                    or v.load.capacity <= 0):
                continue
            if self._wants(v.load, cpu_demand(v.load), tv, t_demand, a):
                senders += 1
        room = max(1, math.floor(tv.cpus - t_demand))
        return senders <= room or self._rng.random() < room / senders

    # ---- bookkeeping -----------------------------------------------------------------------

    def _moving(self) -> dict[str, tuple[float, int]]:
        """CPU and memory of the moves under way, per target."""
        held: dict[str, tuple[float, int]] = {}
        for out in self._outgoing.values():
            cpu, mem = held.get(out.target, (0.0, 0))
            held[out.target] = (cpu + out.job.cpu, mem + out.job.memory_bytes)
        return held

    def _record(self, decision: MoveDecision, task: RunningTask, now: float) -> None:
        # A move under way counts on its target whatever gossip says, as the task is not
        # there yet; after ``moved`` it is a reservation that gossip confirms.
        job = JobRequest(memory_mb=task.memory_mb, cpu=task.cpu)
        self._outgoing[task.task_id] = _Outgoing(decision.target, job, now)

    def moved(self, decision: MoveDecision, now: float) -> None:
        """The task arrived on its target: it counts there until gossip shows it."""
        out = self._outgoing.pop(decision.task_id, None)
        if out is not None:
            self._placement.reserve(out.target, out.job, now)

    def failed(self, decision: MoveDecision, now: float) -> None:
        """The move did not happen (refused, unpicklable, target lost): the task stays, and
        neither it nor the target is tried again for ``cooldown`` seconds."""
        self._outgoing.pop(decision.task_id, None)
        self._target_cool[decision.target] = now + self.cooldown
        self._task_cool[decision.task_id] = now + self.cooldown

    def pending(self) -> dict[str, int]:
        """How many moves this node has made or started that still count on each target."""
        counts = self._placement.pending()
        for out in self._outgoing.values():
            counts[out.target] = counts.get(out.target, 0) + 1
        return counts

    def _expire(self, views: list[NodeView], now: float) -> None:
        self._placement.observe(views, now)
        ttl = self._placement.reservation_ttl
        # A move never reported back is forgotten with its reservation.
        for task_id, out in list(self._outgoing.items()):
            if now >= out.made + ttl:
                del self._outgoing[task_id]
        for table in (self._target_cool, self._task_cool):
            for key, until in list(table.items()):
                if until <= now:
                    del table[key]
