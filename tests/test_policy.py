"""Placement policy: opportunity cost, eligibility, reservations against herding, admit()."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from mosixd.core.gossip import NodeState, NodeView
from mosixd.core.loadvector import LoadVector
from mosixd.core.policy import (MIB, Choice, JobRequest, NoRoom, Placement, admit, cost_base,
                                cpu_cost, cpu_marginal_cost, marginal_cost, node_cost,
                                opportunity_cost)

GIB_MB = 8192


def node(node_id: str, *, load: float = 0.0, cpus: int = 1, speed: float = 1.0,
         tasks: int = 0, free_mb: int = GIB_MB, total_mb: int = GIB_MB, python: str = "3.11.4",
         state: NodeState = NodeState.UP, age: float = 0.0) -> NodeView:
    lv = LoadVector(load=load, cpus=cpus, speed=speed, mem_total=total_mb * MIB,
                    mem_free=free_mb * MIB, local_tasks=tasks, python=python)
    return NodeView(node_id, f"{node_id}:7410", state, lv, age, 1, False)


def ids(choices: list[Choice]) -> list[str]:
    return [c.node_id for c in choices]


def launch(nodes: list[NodeView], count: int, job: JobRequest = JobRequest()) -> Counter[str]:
    """``count`` launches at the same instant, each reserving its node (no gossip between)."""
    placement = Placement()
    placed: Counter[str] = Counter()
    for _ in range(count):
        choice, _ = placement.place(nodes, job, now=100.0)
        placed[choice.node_id] += 1
    return placed


# --- the cost functions -----------------------------------------------------------------------


def test_marginal_cost_is_the_increase_of_a_to_the_utilisation():
    a = cost_base(3)
    assert a == 6.0
    assert marginal_cost(a, 0.5, 0.25) == pytest.approx(a ** 0.75 - a ** 0.5)
    assert opportunity_cost(a, 1.5) == pytest.approx(a ** 1.5)
    assert marginal_cost(a, 2.0, 0.0) == 0.0
    # A base above 1 even on a one-node cluster, so costs are never flat.
    assert cost_base(1) == 2.0 and cost_base(0) == 2.0


def test_costs_never_overflow_and_stay_ordered_below_the_cap():
    assert math.isfinite(marginal_cost(1000.0, 500.0, 1.0))
    assert math.isfinite(opportunity_cost(1000.0, 500.0))
    assert marginal_cost(8.0, 3.0, 1.0) < marginal_cost(8.0, 4.0, 1.0)


def test_node_cost_sums_cpu_and_memory_and_favours_capacity():
    cpu_only = node_cost(4.0, cpu_demand=1.0, capacity=1.0, job_cpu=1.0)
    with_mem = node_cost(4.0, cpu_demand=1.0, capacity=1.0, job_cpu=1.0,
                         mem_used=50.0, mem_total=100.0, job_mem=10.0)
    assert with_mem == pytest.approx(cpu_only + 4.0 ** 0.6 - 4.0 ** 0.5)
    big = node_cost(4.0, cpu_demand=1.0, capacity=2.0, job_cpu=1.0)
    assert big < cpu_only


def test_one_cpu_machines_keep_the_papers_cost():
    a = 6.0
    for demand in (0.0, 0.4, 1.0, 2.5):
        assert cpu_cost(a, demand, 1, 2.0) == pytest.approx(a ** (demand / 2.0))
        assert cpu_marginal_cost(a, demand, 1.0, 1, 2.0) == pytest.approx(
            marginal_cost(a, demand / 2.0, 0.5))


def test_each_cpu_is_a_resource_of_its_own():
    a = 6.0
    # A 4-CPU machine is four CPUs: a job finding one free costs what it costs on an idle
    # one-CPU machine of the same speed, not a quarter of it.
    assert cpu_marginal_cost(a, 0.0, 1.0, 4, 1.0) == pytest.approx(a - 1.0)
    assert cpu_marginal_cost(a, 3.0, 1.0, 4, 1.0) == pytest.approx(a - 1.0)
    # Past saturation all CPUs share the demand: four CPUs at utilisation 5/4.
    assert cpu_cost(a, 5.0, 4, 1.0) == pytest.approx(4 * a ** 1.25)
    # The cost is continuous and grows with the demand, across saturation too.
    demands = [i / 8 for i in range(0, 60)]
    costs = [cpu_cost(a, d, 4, 0.8) for d in demands]
    assert all(b > c for b, c in zip(costs[1:], costs))
    assert cpu_cost(a, 4.0 - 1e-9, 4, 0.8) == pytest.approx(cpu_cost(a, 4.0, 4, 0.8))
    for d in (0.0, 2.5, 3.5, 4.0, 7.0):
        assert cpu_marginal_cost(a, d, 1.0, 4, 0.8) == pytest.approx(
            cpu_cost(a, d + 1.0, 4, 0.8) - cpu_cost(a, d, 4, 0.8))


def test_a_fast_cpu_beats_many_slow_ones_for_one_job():
    # Greedy's lesson: one job runs on one CPU, so an idle 1-CPU machine of speed 2 is
    # cheaper for it than an idle 4-CPU machine of speed 1, where it would run half as fast.
    nodes = [node("quad", cpus=4), node("fast", speed=2.0)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0)) == ["fast", "quad"]
    # Once the fast CPU is full (two jobs at speed 1 each), a free CPU of the 4-CPU machine
    # comes first.
    nodes = [node("quad", cpus=4, tasks=2, load=0.5), node("fast", speed=2.0, tasks=2, load=1.0)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0)) == ["quad", "fast"]


# --- ranking ----------------------------------------------------------------------------------


def test_least_loaded_wins():
    nodes = [node("n1", load=1.0, tasks=1), node("n2"), node("n3", load=0.5)]
    ranked = Placement().rank(nodes, JobRequest(), now=0.0)
    assert ids(ranked) == ["n2", "n3", "n1"]
    assert ranked[0].address == "n2:7410"
    assert ranked[0].cost < ranked[1].cost < ranked[2].cost


def test_task_count_counts_while_the_load_estimate_still_rises():
    # n1's smoothed load has not caught up with its two fresh tasks yet.
    nodes = [node("n1", load=0.1, tasks=2), node("n2", load=0.5)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0)) == ["n2", "n1"]


def test_a_faster_node_takes_more():
    assert launch([node("n1", speed=2.0), node("n2")], 6) == {"n1": 4, "n2": 2}
    # Equally busy in tasks, the faster node is the cheaper one.
    nodes = [node("n1", tasks=1), node("n2", tasks=1, speed=2.0)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0))[0] == "n2"


def test_more_cpus_take_proportionally_more():
    assert launch([node("n1"), node("n2", cpus=2)], 6) == {"n1": 2, "n2": 4}
    assert launch([node("n1"), node("n2", cpus=2)], 9) == {"n1": 3, "n2": 6}
    assert launch([node("n1"), node("n2", cpus=2)], 8)["n2"] in (5, 6)


def test_eight_concurrent_launches_spread_evenly():
    assert launch([node("n1"), node("n2")], 8) == {"n1": 4, "n2": 4}


def test_memory_cost_steers_a_big_job_away_from_a_full_memory():
    nodes = [node("n1", free_mb=1200), node("n2", free_mb=7000)]
    assert ids(Placement().rank(nodes, JobRequest(memory_mb=1000), now=0.0)) == ["n2", "n1"]


# --- eligibility ------------------------------------------------------------------------------


def test_too_much_memory_puts_the_node_out():
    nodes = [node("n1", free_mb=100), node("n2", free_mb=4000)]
    assert ids(Placement().rank(nodes, JobRequest(memory_mb=200), now=0.0)) == ["n2"]


def test_unknown_memory_assumes_a_small_default():
    nodes = [node("n1", free_mb=10), node("n2")]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0)) == ["n2"]


def test_no_room_names_every_node():
    nodes = [node("n1", free_mb=100), node("n2", free_mb=150), node("n3", state=NodeState.DOWN)]
    with pytest.raises(NoRoom) as info:
        Placement().rank(nodes, JobRequest(memory_mb=200), now=0.0)
    assert info.value.reasons == {
        "n1": "not enough memory: 100 MB free, 200 MB asked",
        "n2": "not enough memory: 150 MB free, 200 MB asked",
        "n3": "down",
    }
    assert "n1" in str(info.value) and "n3" in str(info.value)


def test_a_job_short_only_of_free_memory_is_held_rather_than_over_committed():
    # Both nodes have 8 GiB but too little of it free: the job fits once tasks there end, so
    # the caller should keep it in the queue; no node is ranked at the cost of over-committing.
    nodes = [node("n1", free_mb=100), node("n2", free_mb=150)]
    with pytest.raises(NoRoom) as info:
        Placement().rank(nodes, JobRequest(memory_mb=200), now=0.0)
    assert info.value.fits_later


def test_waiting_does_not_help_a_job_no_node_can_ever_hold():
    # Bigger than every node's memory: no amount of waiting makes it fit.
    small = [node("n1", free_mb=1000, total_mb=2048), node("n2", free_mb=2048, total_mb=2048)]
    with pytest.raises(NoRoom) as info:
        Placement().rank(small, JobRequest(memory_mb=3000), now=0.0)
    assert not info.value.fits_later
    # The only node big enough is down, blocked, excluded or of another Python: waiting for
    # memory does not help either (its state may change, but that is not memory).
    for big in (node("n2", state=NodeState.DOWN), node("n2", state=NodeState.BLOCKED),
                node("n2", python="3.12.1")):
        with pytest.raises(NoRoom) as info:
            Placement().rank([small[0], big], JobRequest(memory_mb=3000, python="3.11.7"),
                             now=0.0)
        assert not info.value.fits_later
    with pytest.raises(NoRoom) as info:
        Placement().rank([small[0], node("n2")], JobRequest(memory_mb=3000), now=0.0,
                         exclude=["n2"])
    assert not info.value.fits_later


def test_memory_held_by_reservations_frees_later_too():
    placement = Placement()
    nodes = [node("n1", free_mb=1000, total_mb=1000)]
    placement.place(nodes, JobRequest(memory_mb=600), now=0.0)
    with pytest.raises(NoRoom) as info:
        placement.rank(nodes, JobRequest(memory_mb=600), now=0.5)
    assert info.value.fits_later


def test_reserved_memory_counts_against_the_free_memory():
    placement = Placement()
    nodes = [node("n1", free_mb=1000)]
    placement.place(nodes, JobRequest(memory_mb=600), now=0.0)
    with pytest.raises(NoRoom) as info:
        placement.rank(nodes, JobRequest(memory_mb=600), now=0.5)
    assert info.value.reasons == {"n1": "not enough memory: 400 MB free, 600 MB asked"}


def test_blocked_and_down_nodes_are_out():
    nodes = [node("n1", state=NodeState.BLOCKED), node("n2", load=3.0, tasks=3),
             node("n3", state=NodeState.DOWN)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0)) == ["n2"]
    with pytest.raises(NoRoom) as info:
        Placement().rank(nodes[:1] + nodes[2:], JobRequest(), now=0.0)
    assert info.value.reasons == {"n1": "blocked", "n3": "down"}


def test_python_must_match_major_minor():
    nodes = [node("n1", python="3.12.1"), node("n2", python="3.11.9", load=2.0, tasks=2)]
    assert ids(Placement().rank(nodes, JobRequest(python="3.11.7"), now=0.0)) == ["n2"]
    assert ids(Placement().rank(nodes, JobRequest(python=""), now=0.0)) == ["n1", "n2"]
    with pytest.raises(NoRoom) as info:
        Placement().rank(nodes[:1], JobRequest(python="3.11.7"), now=0.0)
    assert info.value.reasons == {"n1": "python 3.12 there, 3.11 asked"}


def test_exclude():
    nodes = [node("n1"), node("n2", load=1.0, tasks=1)]
    assert ids(Placement().rank(nodes, JobRequest(), now=0.0, exclude=["n1"])) == ["n2"]
    with pytest.raises(NoRoom) as info:
        Placement().rank(nodes, JobRequest(), now=0.0, exclude={"n1", "n2"})
    assert info.value.reasons == {"n1": "excluded", "n2": "excluded"}


# --- reservations -----------------------------------------------------------------------------


def test_observe_drops_a_reservation_once_gossip_confirms_it():
    placement = Placement(confirm_lag=2.0)
    placement.reserve("n1", JobRequest(), now=10.0)
    placement.reserve("n2", JobRequest(), now=10.0)
    # n1's entry was born at 11.0 (now 13.0, age 2.0): too early to include the task.
    placement.observe([node("n1", age=2.0), node("n2", age=3.0)], now=13.0)
    assert placement.pending() == {"n1": 1, "n2": 1}
    placement.observe([node("n1", age=0.5, tasks=1), node("n2", age=3.0)], now=13.0)
    assert placement.pending() == {"n2": 1}


def test_reservations_expire_after_the_ttl():
    placement = Placement(reservation_ttl=10.0)
    placement.reserve("n1", JobRequest(), now=0.0)
    nodes = [node("n1", age=30.0), node("n2", age=30.0)]  # gossip never confirms it
    assert ids(placement.rank(nodes, JobRequest(), now=9.0)) == ["n2", "n1"]
    placement.observe(nodes, now=9.0)
    assert placement.pending() == {"n1": 1}
    # Even before observe() prunes it, rank() stops counting an expired reservation.
    assert ids(placement.rank(nodes, JobRequest(), now=10.0)) == ["n1", "n2"]
    placement.observe(nodes, now=10.0)
    assert placement.pending() == {}


def test_release_frees_the_node():
    placement = Placement()
    nodes = [node("n1"), node("n2")]
    choice, reservation = placement.place(nodes, JobRequest(), now=0.0)
    assert choice.node_id == "n1"
    assert ids(placement.rank(nodes, JobRequest(), now=0.0))[0] == "n2"
    placement.release(reservation)
    placement.release(reservation)  # twice is harmless
    assert ids(placement.rank(nodes, JobRequest(), now=0.0))[0] == "n1"
    assert placement.pending() == {}


def test_base_must_be_above_one():
    with pytest.raises(ValueError):
        Placement(base=1.0)
    # idle CPU 3**1 - 3**0, plus the default 64 MB on an empty 8 GiB memory
    expected = 2.0 + 3.0 ** (64 / GIB_MB) - 1.0
    best = Placement(base=3.0).rank([node("n1")], JobRequest(), 0.0)[0]
    assert best.cost == pytest.approx(expected)


# --- admit ------------------------------------------------------------------------------------


def own(**kw: object) -> LoadVector:
    base: dict[str, object] = dict(mem_total=GIB_MB * MIB, mem_free=GIB_MB * MIB, python="3.12.3")
    base.update(kw)
    return LoadVector(**base)  # type: ignore[arg-type]


def test_admit_accepts_what_fits():
    job = JobRequest(python="3.12.0", memory_mb=100)
    assert admit(own(), job, blocked=False, starting=0) is None
    assert admit(own(local_tasks=3), JobRequest(), blocked=False, starting=0, max_tasks=5) is None


def test_admit_reasons():
    job = JobRequest(python="3.11.7")
    assert admit(own(), job, blocked=True, starting=0) == "node is blocked"
    assert admit(own(), job, blocked=False, starting=0) == "python 3.12 here, 3.11 asked"
    assert admit(own(mem_free=300 * MIB), JobRequest(memory_mb=500), blocked=False,
                 starting=0) == "not enough memory: 300 MB free, 500 MB asked"
    assert admit(own(local_tasks=2, guest_tasks=1), JobRequest(), blocked=False, starting=1,
                 max_tasks=4) == "node is full (4 tasks)"
    assert admit(own(local_tasks=9), JobRequest(), blocked=False, starting=3, max_tasks=0) is None


def test_a_slow_start_is_confirmed_only_by_an_entry_made_after_it():
    placement = Placement(confirm_lag=2.0)
    reservation = placement.reserve("n1", JobRequest(), now=10.0)
    placement.started(reservation, now=14.0)  # the node took 4 s to start it
    # n1's entry born at 13.0 is past the lag after the reservation, but before the start.
    placement.observe([node("n1", age=2.0)], now=15.0)
    assert placement.pending() == {"n1": 1}
    placement.observe([node("n1", age=0.5, tasks=1)], now=16.5)
    assert placement.pending() == {}
    placement.started(reservation, now=17.0)  # a reservation gone already: harmless
