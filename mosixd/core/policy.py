"""Placement policy: on which node a new task should run. Sans-IO.

Opportunity cost (Amir, Awerbuch, Barak, Borgstrom, Keren, "An Opportunity Cost Approach
for Job Assignment in a Scalable Computing Cluster", IEEE TPDS 11(7), 2000): resource r
(CPU, memory) of machine m costs ``a ** u(m, r)``, u being its utilisation, and a job goes
to the machine where it raises the summed cost least:

    marginal(m) = sum over r of  a ** (u(m, r) + d(r) / capacity(m, r))  -  a ** u(m, r)

where d(r) is what the job uses of r. A busy resource is dearer than the same share of an
idle one, CPU and memory trade on one scale, and a bigger or faster machine is cheaper.

Each CPU of a machine is a resource of its own (``cpu_cost``): a job runs on one CPU at a
time, so a 4-CPU machine is four CPUs of its speed, not one CPU four times as fast. On a
one-CPU machine this is the paper's cost unchanged.

Nothing here reads a clock or the network: callers pass ``now`` and the gossip view, so a
simulator drives the same functions as the daemon. Moving tasks that already run is
decided in ``mosixd.core.rebalance`` with the same cost functions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from mosixd.core.gossip import NodeState, NodeView
from mosixd.core.loadvector import LoadVector

MIB = 1024 * 1024
# A job started without -m still takes memory; an interpreter with a few imports is a few
# tens of MB, so assume this much rather than nothing, both to check it fits and to cost it.
DEFAULT_MEMORY_MB = 64
# exp(709) is the largest finite float: past this every cost is equal, CPU use breaks ties.
_MAX_EXPONENT = 700.0


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a home knows about a job before it starts it."""

    memory_mb: int = 0  # -m MB; 0: unknown, DEFAULT_MEMORY_MB is assumed
    python: str = ""  # home interpreter version "3.11.7"; "" for non-Python programs
    cpu: float = 1.0  # expected demand in standard CPUs

    @property
    def memory_bytes(self) -> int:
        """The memory the job is taken to need, in bytes."""
        return (self.memory_mb if self.memory_mb > 0 else DEFAULT_MEMORY_MB) * MIB


@dataclass(frozen=True, slots=True)
class Choice:
    """A node that can take the job, with the marginal opportunity cost of placing it there."""

    node_id: str
    address: str
    cost: float


class NoRoom(Exception):
    """No node can take the job; ``reasons`` maps each node id to why it was out.

    ``fits_later``: some node was out only for want of free memory, and has at least the
    job's memory in all. The job fits once tasks there end, so the caller should hold it
    (``mosrun -q`` waits in the home's queue) rather than start it anywhere: a node whose
    memory is over-committed slows every task it runs. False when waiting cannot help
    (every node is down, blocked, excluded, of another Python, or too small for the job).
    """

    def __init__(self, reasons: dict[str, str], *, fits_later: bool = False) -> None:
        self.reasons = dict(reasons)
        self.fits_later = fits_later
        detail = "; ".join(f"{node}: {why}" for node, why in self.reasons.items())
        super().__init__(f"no node can take the job ({detail or 'no node known'})")


# --- the pure cost functions (shared with simulators) --------------------------------------


def cost_base(n: int) -> float:
    """The base ``a`` of the cost for a cluster of ``n`` nodes: ``2n``.

    The theory (ASSIGN-U) prices utilisation measured against the optimal assignment's peak
    with a base between 1 and 2; the paper's practical strategy measures it against the
    machine itself, which the competitive ratio lets be O(log n) times fuller, and so gets
    a base of about n (cost n ** u). We take 2n: the same growth, and still a base of 2 on a
    one-node cluster, where n ** u would make every cost flat.
    """
    return 2.0 * max(1, n)


def opportunity_cost(a: float, utilisation: float) -> float:
    """The cost ``a ** u`` of one resource at utilisation ``u`` (capped, never overflows)."""
    return math.exp(min(utilisation * math.log(a), _MAX_EXPONENT))


def marginal_cost(a: float, utilisation: float, added: float) -> float:
    """``a ** (u + added) - a ** u``: what adding ``added`` utilisation costs."""
    if added <= 0.0:
        return 0.0
    # Written as a**u * (a**added - 1), in logs, so it neither overflows nor cancels.
    ln_a = math.log(a)
    return math.exp(min(utilisation * ln_a + math.log(math.expm1(added * ln_a)), _MAX_EXPONENT))


def _below_saturation(a: float, demand: float, speed: float) -> float:
    """``cpu_cost`` minus its idle value, for ``demand`` of at most the machine's CPUs."""
    whole = math.floor(demand)
    ln_a = math.log(a)
    # ``whole`` CPUs run one job each, one CPU the fraction left, the others are idle.
    return (whole * math.expm1(min(ln_a / speed, _MAX_EXPONENT))
            + math.expm1(min((demand - whole) * ln_a / speed, _MAX_EXPONENT)))


def cpu_cost(a: float, demand: float, cpus: int, speed: float) -> float:
    """Opportunity cost of the CPUs of one machine with ``demand`` standard CPUs of demand.

    The sum over its CPUs of ``a ** u``, each CPU's utilisation ``u`` measured against a
    standard CPU (one job on a CPU of speed 2 is 0.5). Below saturation jobs get a CPU each
    (the last one a fraction); past it the CPUs share all the demand equally, as the
    scheduler does.
    """
    cpus = max(1, cpus)
    if demand <= cpus:
        return cpus + _below_saturation(a, max(0.0, demand), speed)
    return cpus * opportunity_cost(a, demand / (cpus * speed))


def cpu_marginal_cost(a: float, demand: float, added: float, cpus: int, speed: float) -> float:
    """``cpu_cost(demand + added) - cpu_cost(demand)``, without cancellation or overflow."""
    if added <= 0.0:
        return 0.0
    cpus = max(1, cpus)
    demand = max(0.0, demand)
    cost = 0.0
    if demand < cpus:  # the part of the job that still finds a free CPU
        top = min(demand + added, float(cpus))
        cost += _below_saturation(a, top, speed) - _below_saturation(a, demand, speed)
    if demand + added > cpus:  # the part that shares saturated CPUs
        start = max(demand, float(cpus))
        capacity = cpus * speed
        cost += cpus * marginal_cost(a, start / capacity, (demand + added - start) / capacity)
    return cost


def node_cost(a: float, *, cpu_demand: float, capacity: float, job_cpu: float, cpus: int = 1,
              mem_used: float = 0.0, mem_total: float = 0.0, job_mem: float = 0.0) -> float:
    """Marginal opportunity cost of a job on one machine: CPU term plus memory term.

    ``cpu_demand`` and ``job_cpu`` are in standard CPUs, ``capacity`` is ``cpus * speed``
    and the CPU term is ``cpu_marginal_cost`` over its ``cpus`` CPUs; memory is in any one
    unit, and ``mem_total`` 0 (not reported) adds no memory cost.
    """
    cpus = max(1, cpus)
    cost = cpu_marginal_cost(a, cpu_demand, job_cpu, cpus, capacity / cpus)
    if mem_total > 0:
        cost += marginal_cost(a, mem_used / mem_total, job_mem / mem_total)
    return cost


def cpu_demand(load: LoadVector) -> float:
    """Standard CPUs a node is taken to be using: the larger of its load and its task count.

    The load estimate rises slowly on purpose, while the task count is up to date, so the
    larger of the two sees a burst of starts at once.
    """
    return max(load.load * load.capacity, float(load.tasks))


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _python_reason(have: str, want: str, where: str) -> str | None:
    # Pickled state and bytecode caches are only portable within one major.minor. A node
    # that reports no version (never a real daemon) is given the benefit of the doubt.
    if want and have and _major_minor(have) != _major_minor(want):
        return f"python {_major_minor(have)} {where}, {_major_minor(want)} asked"
    return None


def _memory_reason(free: int, job: JobRequest) -> str | None:
    if job.memory_bytes > free:
        free_mb, asked_mb = max(0, free) // MIB, job.memory_bytes // MIB
        return f"not enough memory: {free_mb} MB free, {asked_mb} MB asked"
    return None


# --- placement with reservations -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reservation:
    node_id: str
    cpu: float
    memory: int  # bytes
    made: float
    started: float | None = None  # when the node said the task runs: it counts it from then on


class Placement:
    """Placement decisions of one home node, with the reservations it has made.

    A reservation stands for a task this home is starting on a node: it counts on that node
    until gossip shows an entry born late enough to include the task, so that concurrent
    launches spread instead of all picking the node that looked idlest.
    """

    def __init__(self, *, reservation_ttl: float = 10.0, confirm_lag: float = 2.0,
                 base: float | None = None) -> None:
        """``confirm_lag``: seconds after a reservation before a node's entry counts the task
        (at least the load sampling interval, plus the time to start it). ``base``: a fixed
        ``a`` instead of ``cost_base(number of live nodes)``."""
        if base is not None and base <= 1.0:
            raise ValueError("base must be above 1")
        self.reservation_ttl = reservation_ttl
        self.confirm_lag = confirm_lag
        self.base = base
        self._ids = itertools.count(1)
        self._held: dict[int, _Reservation] = {}

    def rank(self, nodes: list[NodeView], job: JobRequest, now: float, *,
             exclude: Iterable[str] = (),
             extra: dict[str, tuple[float, int]] | None = None) -> list[Choice]:
        """Eligible nodes, lowest marginal cost first; raises NoRoom if there is none.

        Eligible: up (not down nor blocked), not in ``exclude``, the same major.minor Python
        when ``job.python`` is set, and enough free memory after this home's reservations.
        Memory is never over-committed: when it alone keeps the job out, ``NoRoom.fits_later``
        says to hold the job until a node has room. ``extra``: CPU and memory (bytes) to count
        on nodes besides the reservations, e.g. tasks on their way there.
        """
        excluded = set(exclude)
        a = self.base_for(nodes)
        held = self.held(now)
        for node_id, (cpu, mem) in (extra or {}).items():
            cpu_held, mem_held = held.get(node_id, (0.0, 0))
            held[node_id] = (cpu_held + cpu, mem_held + mem)
        ranked: list[tuple[float, float, Choice]] = []
        reasons: dict[str, str] = {}
        fits_later = False
        for node in nodes:
            lv = node.load
            cpu_held, mem_held = held.get(node.id, (0.0, 0))
            why = (("excluded" if node.id in excluded else None)
                   or (None if node.state is NodeState.UP else node.state.value)
                   or _python_reason(lv.python, job.python, "there")
                   or ("no CPU capacity reported" if lv.capacity <= 0 else None))
            if why is None and lv.mem_total > 0:
                why = _memory_reason(lv.mem_free - mem_held, job)
                # Out for its free memory alone, on a node big enough: waiting will do.
                fits_later = fits_later or (why is not None and job.memory_bytes <= lv.mem_total)
            if why:
                reasons[node.id] = why
                continue
            demand = cpu_demand(lv) + cpu_held
            cost = node_cost(a, cpu_demand=demand, capacity=lv.capacity, job_cpu=job.cpu,
                             cpus=lv.cpus, mem_used=lv.mem_total - lv.mem_free + mem_held,
                             mem_total=lv.mem_total, job_mem=job.memory_bytes)
            # Equal costs (e.g. all saturated) go to the lower CPU utilisation afterwards,
            # then keep the caller's order, so decisions are reproducible.
            after = (demand + job.cpu) / lv.capacity
            ranked.append((cost, after, Choice(node.id, node.address, cost)))
        if not ranked:
            raise NoRoom(reasons, fits_later=fits_later)
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [choice for _, _, choice in ranked]

    def base_for(self, nodes: list[NodeView]) -> float:
        """The base ``a`` costs are priced with: the fixed base, else ``cost_base`` of the
        number of nodes still members (not confirmed down, not left)."""
        if self.base is not None:
            return self.base
        gone = (NodeState.DOWN, NodeState.LEFT)
        return cost_base(sum(1 for node in nodes if node.state not in gone))

    def held(self, now: float) -> dict[str, tuple[float, int]]:
        """CPU (standard CPUs) and memory (bytes) this placement has reserved on each node
        and still counts at ``now``."""
        held: dict[str, tuple[float, int]] = {}
        for r in self._held.values():
            if now < r.made + self.reservation_ttl:
                cpu, mem = held.get(r.node_id, (0.0, 0))
                held[r.node_id] = (cpu + r.cpu, mem + r.memory)
        return held

    def reserve(self, node_id: str, job: JobRequest, now: float) -> int:
        """Count ``job`` on ``node_id`` until gossip confirms it; returns the reservation id."""
        reservation = next(self._ids)
        self._held[reservation] = _Reservation(node_id, job.cpu, job.memory_bytes, now)
        return reservation

    def place(self, nodes: list[NodeView], job: JobRequest, now: float, *,
              exclude: Iterable[str] = ()) -> tuple[Choice, int]:
        """The best node for ``job``, reserved: ``rank`` then ``reserve`` the first."""
        best = self.rank(nodes, job, now, exclude=exclude)[0]
        return best, self.reserve(best.node_id, job, now)

    def started(self, reservation: int, now: float) -> None:
        """The node confirmed the start: only an entry it made after that can count the task
        (a slow start must not be taken as confirmed by an entry made before it)."""
        r = self._held.get(reservation)
        if r is not None:
            self._held[reservation] = dataclasses.replace(r, started=now)

    def release(self, reservation: int) -> None:
        """Forget a reservation whose start failed or was refused (unknown ids are ignored)."""
        self._held.pop(reservation, None)

    def observe(self, nodes: list[NodeView], now: float) -> None:
        """Drop reservations gossip has confirmed, and those older than the ttl.

        A node's entry confirms a reservation when it was born (``now - age``) at least
        ``confirm_lag`` after the reservation was made: its task count then includes it.
        """
        born = {node.id: now - node.age for node in nodes}
        for reservation, r in list(self._held.items()):
            since = r.started if r.started is not None else r.made
            confirmed = born.get(r.node_id, -math.inf) >= since + self.confirm_lag
            if confirmed or now >= r.made + self.reservation_ttl:
                del self._held[reservation]

    def pending(self) -> dict[str, int]:
        """How many reservations are held on each node."""
        return dict(Counter(r.node_id for r in self._held.values()))


def admit(own: LoadVector, job: JobRequest, *, blocked: bool, starting: int,
          max_tasks: int = 0) -> str | None:
    """Host-side check before a task starts here: None to accept, else why it is refused.

    ``starting``: tasks accepted but not yet counted in ``own``. ``max_tasks`` 0: no limit.
    """
    if blocked:
        return "node is blocked"
    why = _python_reason(own.python, job.python, "here")
    if why is None and own.mem_total > 0:
        why = _memory_reason(own.mem_free, job)
    if why is None and max_tasks > 0 and own.tasks + starting >= max_tasks:
        why = f"node is full ({own.tasks + starting} tasks)"
    return why
