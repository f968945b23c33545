"""Tests for mosixd.core.gossip: the sans-IO gossip core, driven with explicit clocks."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from bench.rounds import RoundSim, address_of
from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor, Status

CFG = GossipConfig()  # interval 1, window 20, 2 suspect rounds, 3 helpers, fanout 2, ...
UP, DOWN, BLOCKED = NodeState.UP, NodeState.DOWN, NodeState.BLOCKED
SUSPECT, LEFT = NodeState.SUSPECT, NodeState.LEFT
addr = address_of


def lv(load: float = 0.5) -> LoadVector:
    return LoadVector(load=load, cpus=2, mem_total=1 << 30, mem_free=1 << 29, python="3.11.7")


def entry(name: str, age: float, generation: int = 1, *, incarnation: int = 0,
          blocked: bool = False, leaving: bool = False, load: float = 0.5) -> Entry:
    return Entry(name, addr(name), generation, incarnation, age, blocked, leaving, lv(load))


def rumor(name: str, status: Status, incarnation: int = 0, generation: int = 1) -> Rumor:
    return Rumor(name, addr(name), generation, incarnation, status)


def solo(name: str = "n1", now: float = 100.0, config: GossipConfig = CFG,
         seed: int = 0) -> GossipView:
    return GossipView(name, addr(name), config, now, generation=1, load=lv(),
                      rng=random.Random(seed))


def run_until(sim: RoundSim, done: Callable[[], bool], max_rounds: int) -> int:
    """Rounds run until done() holds; fails the test after max_rounds."""
    for r in range(max_rounds + 1):
        if done():
            return r
        sim.step()
    pytest.fail(f"not done after {max_rounds} rounds")


def all_up(sim: RoundSim, names: Iterable[str]) -> bool:
    names = set(names)
    return all(set(sim.states(o)) == names and set(sim.states(o).values()) == {UP}
               for o in names)


def everyone_sees(sim: RoundSim, node: str, state: NodeState) -> bool:
    return all(sim.state(o, node) is state for o in sim.alive if o != node)


def cluster(n: int, config: GossipConfig = CFG, seed: int = 0) -> RoundSim:
    """n nodes that all know n1 only, run until every view is complete and up."""
    sim = RoundSim(config, seed)
    sim.start("n1")
    for i in range(2, n + 1):
        sim.start(f"n{i}", seeds=["n1"])
    names = [f"n{i}" for i in range(1, n + 1)]
    run_until(sim, lambda: all_up(sim, names), 15)
    return sim


# ------------------------------------------------------------------ the window


def test_window_has_own_entry_first_then_the_freshest() -> None:
    view = solo()
    view.receive([entry(f"n{i}", age=float(i)) for i in range(2, 40)], now=100.0)
    window = view.outgoing(now=100.0)
    assert len(window) == CFG.window
    assert window[0].node_id == "n1" and window[0].age == 0.0
    assert [e.node_id for e in window[1:]] == [f"n{i}" for i in range(2, 21)]
    assert [e.age for e in window[1:]] == sorted(e.age for e in window[1:])


def test_small_cluster_sends_everything() -> None:
    view = solo()
    view.receive([entry("n2", 3.0), entry("n3", 1.0)], now=100.0)
    assert [e.node_id for e in view.outgoing(100.0)] == ["n1", "n3", "n2"]


def test_window_stays_the_freshest_under_random_updates() -> None:
    # The window is maintained incrementally; check it against a full sort every step.
    rng = random.Random(7)
    view = solo(config=GossipConfig(window=8))
    truth: dict[str, tuple[int, float]] = {}  # id -> (generation, born)
    now = 0.0
    for _ in range(300):
        now += rng.uniform(0.0, 0.5)
        batch = []
        for _ in range(rng.randrange(1, 5)):
            name = f"n{rng.randrange(2, 30)}"
            gen = truth.get(name, (1, 0.0))[0] + (rng.random() < 0.05)  # a restart
            e = entry(name, age=rng.uniform(0.0, 20.0), generation=gen)
            batch.append(e)
            old = truth.get(name)
            born = now - e.age
            if old is None or gen > old[0] or (gen == old[0] and born > old[1]):
                truth[name] = (gen, born)
        view.receive(batch, now)
        got = [(e.node_id, round(e.age, 9)) for e in view.outgoing(now)[1:]]
        best = sorted(truth.items(), key=lambda kv: -kv[1][1])[:7]
        assert got == [(k, round(now - b, 9)) for k, (_, b) in best]


def test_self_is_never_overwritten() -> None:
    view = solo("n1")
    view.receive([entry("n1", 0.0, generation=9, leaving=True)], now=100.0)
    me = view.outgoing(100.0)[0]
    assert (me.generation, me.leaving) == (1, False)
    assert view.state_of("n1", 100.0) is UP
    assert [v.id for v in view.view(100.0)] == ["n1"]


def test_view_is_self_first_then_natural_order() -> None:
    view = solo("n3")
    view.receive([entry(n, 0.0) for n in ("n10", "n2", "n1", "n21")], now=5.0)
    views = view.view(5.0)
    assert [v.id for v in views] == ["n3", "n1", "n2", "n10", "n21"]
    assert views[0].is_self and not any(v.is_self for v in views[1:])


# ------------------------------------------------------------------ ages and clocks


def test_age_grows_with_local_time() -> None:
    view = solo()
    view.receive([entry("n2", age=1.0)], now=100.0)
    assert view.entry("n2", 100.0).age == pytest.approx(1.0)
    assert view.entry("n2", 103.5).age == pytest.approx(4.5)
    assert view.outgoing(103.5)[1].age == pytest.approx(4.5)
    assert {v.id: v.age for v in view.view(103.5)}["n2"] == pytest.approx(4.5)


def test_ages_travel_relative_between_unsynchronised_clocks() -> None:
    a = solo("n1", now=1_000_000.0)  # clocks a million seconds apart
    b = solo("n2", now=-42.0)
    a.receive([entry("n3", age=2.0)], now=1_000_000.0)
    # 3 s later on both clocks, a pushes to b: n3's entry is 5 s old everywhere.
    b.receive(a.outgoing(1_000_003.0), now=-39.0)
    assert b.entry("n3", -39.0).age == pytest.approx(5.0)
    assert b.entry("n1", -39.0).age == 0.0
    assert b.entry("n1", -38.0).age == pytest.approx(1.0)


def test_fresher_wins_and_older_is_ignored() -> None:
    view = solo()
    view.receive([entry("n2", age=3.0, load=0.1)], now=10.0)
    view.receive([entry("n2", age=4.0, load=0.9)], now=10.5)  # born 6.5 < 7: older
    assert view.entry("n2", 10.5).load.load == 0.1
    view.receive([entry("n2", age=1.0, load=0.7)], now=11.0)  # born 10: fresher
    assert view.entry("n2", 11.0).load.load == 0.7


def test_higher_generation_wins_even_if_older() -> None:
    view = solo()
    view.receive([entry("n2", age=0.0, generation=1)], now=10.0)
    view.receive([entry("n2", age=3.0, generation=2)], now=10.0)
    assert view.entry("n2", 10.0).generation == 2
    view.receive([entry("n2", age=0.0, generation=1)], now=10.0)  # its previous life
    assert view.entry("n2", 10.0).generation == 2


# ------------------------------------------------------------------ joining


def test_join_through_a_seed() -> None:
    sim = RoundSim(seed=1)
    sim.start("n1")
    sim.start("n2", seeds=["n1"])
    sim.start("n3", seeds=["n1"])
    rounds = run_until(sim, lambda: all_up(sim, ["n1", "n2", "n3"]), 5)
    assert rounds <= 3


def test_node_learned_through_gossip_is_contacted_directly() -> None:
    sim = RoundSim(seed=3)
    sim.start("n1")
    sim.start("n2", seeds=["n1"])
    run_until(sim, lambda: all_up(sim, ["n1", "n2"]), 3)
    sim.start("n3", seeds=["n1"])  # n2 is never told of n3 by configuration
    run_until(sim, lambda: sim.state("n2", "n3") is UP, 5)
    n2 = sim.nodes["n2"]
    chosen = set()
    for _ in range(20):
        chosen.update(n2.choose_targets(sim.now("n2")))
        sim.step()
    assert addr("n3") in chosen


def test_eight_nodes_converge_all_up_and_stay_so() -> None:
    sim = RoundSim(seed=11)
    sim.start("n1")
    for i in range(2, 9):
        sim.start(f"n{i}", seeds=["n1"])
    names = [f"n{i}" for i in range(1, 9)]
    rounds = run_until(sim, lambda: all_up(sim, names), 10)
    assert rounds <= 6
    for _ in range(10):
        sim.step()
        assert all_up(sim, names)


def test_a_join_is_news_told_to_everyone() -> None:
    sim = RoundSim.formed(40, seed=4)
    for _ in range(3):
        sim.step()
    sim.start("n41", seeds=["n7"])  # known to one node only
    # The join travels as a rumor: far faster than its entry through windows of 20 of 41.
    run_until(sim, lambda: all(sim.state(o, "n41") is not None for o in sim.alive), 8)


def test_a_node_known_from_a_rumor_only_has_no_capacity_and_is_not_in_windows() -> None:
    view = solo()
    view.hear([rumor("n7", Status.ALIVE)], now=100.0)
    assert view.state_of("n7", 100.0) is UP
    (seen,) = [v for v in view.view(100.0) if v.id == "n7"]
    assert seen.load.capacity == 0  # so placement never picks it before its load is known
    assert [e.node_id for e in view.outgoing(100.0)] == ["n1"]
    view.receive([entry("n7", age=1.0, load=0.25)], now=100.0)  # its first real entry wins
    assert view.entry("n7", 100.0).load.load == 0.25
    assert [e.node_id for e in view.outgoing(100.0)] == ["n1", "n7"]


# ------------------------------------------------------------------ failures


def test_a_failed_contact_is_probed_through_helpers_before_any_suspicion() -> None:
    view = solo()
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 8)], now=10.0)
    helpers = view.contact_failed(addr("n2"), now=11.0)
    assert len(helpers) == CFG.helpers and addr("n2") not in helpers and view.address not in helpers
    assert view.state_of("n2", 11.0) is UP  # one bad link condemns nobody
    assert view.contact_failed(addr("n2"), now=11.2) == []  # a probe is already under way
    view.probe_result(addr("n2"), reached=True, now=11.5)
    assert view.state_of("n2", 11.5) is UP
    assert view.contact_failed(addr("n2"), now=12.0)
    view.probe_result(addr("n2"), reached=False, now=12.5)
    assert view.state_of("n2", 12.5) is SUSPECT
    assert view.rumors.peek("n2") == rumor("n2", Status.SUSPECT)


def test_the_prober_declares_death_after_failed_rounds_only() -> None:
    view = solo()
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 8)], now=10.0)
    view.contact_failed(addr("n2"), 11.0)
    view.probe_result(addr("n2"), False, 11.0)
    for k in range(CFG.suspect_rounds):
        assert view.state_of("n2", 11.0 + k) is SUSPECT
        assert addr("n2") in view.choose_targets(12.0 + k)  # probed again every round
        assert view.contact_failed(addr("n2"), 12.0 + k)
        view.probe_result(addr("n2"), False, 12.0 + k)
    assert view.state_of("n2", 20.0) is DOWN
    assert view.rumors.peek("n2") == rumor("n2", Status.DEAD)
    assert addr("n2") not in view.push_targets(20.0)


def test_without_helpers_a_failed_contact_is_a_suspicion_at_once() -> None:
    view = solo()
    view.receive([entry("n2", 0.0)], now=10.0)
    assert view.contact_failed(addr("n2"), now=11.0) == []
    assert view.state_of("n2", 11.0) is SUSPECT


def test_killed_node_is_down_everywhere_within_a_few_rounds() -> None:
    sim = cluster(3, seed=2)
    sim.kill("n3")
    run_until(sim, lambda: everyone_sees(sim, "n3", DOWN), 6)
    assert sim.state("n1", "n2") is UP and sim.state("n2", "n1") is UP


def test_a_suspect_that_hears_of_it_refutes_and_is_taken_back() -> None:
    view = solo("n1")
    view.hear([rumor("n1", Status.SUSPECT, incarnation=0)], now=10.0)
    assert view.incarnation == 1
    assert view.rumors.peek("n1") == rumor("n1", Status.ALIVE, incarnation=1)
    assert view.outgoing(10.0)[0].incarnation == 1
    other = solo("n2")
    other.receive([entry("n1", 0.0)], now=10.0)
    other.hear([rumor("n1", Status.SUSPECT)], now=10.0)
    assert other.state_of("n1", 10.0) is SUSPECT
    other.receive([entry("n1", 0.0)], now=10.5)  # alive, but in the suspected incarnation
    assert other.state_of("n1", 10.5) is SUSPECT
    other.hear(view.rumors_for(other.address, 11.0), now=11.0)
    assert other.state_of("n1", 11.0) is UP


def test_a_refutation_at_a_lower_incarnation_counts_for_nothing() -> None:
    view = solo("n1")
    view.receive([entry("n2", 0.0)], now=10.0)
    view.hear([rumor("n2", Status.SUSPECT, incarnation=3)], now=10.0)
    view.hear([rumor("n2", Status.ALIVE, incarnation=3)], now=10.0)
    assert view.state_of("n2", 10.0) is SUSPECT
    view.hear([rumor("n2", Status.DEAD, incarnation=3)], now=10.0)
    view.receive([entry("n2", 0.0, incarnation=3)], now=11.0)  # a dead node's entry
    assert view.state_of("n2", 11.0) is DOWN
    view.receive([entry("n2", 0.0, incarnation=4)], now=12.0)  # it refuted: back at once
    assert view.state_of("n2", 12.0) is UP


def test_every_message_to_an_accused_node_tells_it_so() -> None:
    view = solo("n1")
    view.receive([entry("n2", 0.0), entry("n3", 0.0)], now=10.0)
    view.hear([rumor("n2", Status.SUSPECT)], now=10.0)
    while view.rumors:  # told so often that the queue is empty
        view.rumors.take(8, 1)
    assert view.rumors_for(addr("n2"), 11.0) == [rumor("n2", Status.SUSPECT)]
    assert view.rumors_for(addr("n3"), 11.0) == []


def test_a_live_node_briefly_cut_off_is_suspected_refutes_and_is_never_down() -> None:
    sim = RoundSim.formed(12, seed=8)
    watched: list[Rumor] = []
    sim.meter = lambda sender, entries, rumors: watched.extend(r for r in rumors if r.node_id == "n5")
    for _ in range(3):
        sim.step()
    sim.split(["n5"], [f"n{i}" for i in range(1, 13) if i != 5])
    run_until(sim, lambda: any(sim.state(o, "n5") is SUSPECT for o in sim.alive if o != "n5"), 10)
    sim.heal()
    run_until(sim, lambda: everyone_sees(sim, "n5", UP), 8)
    assert Status.SUSPECT in {r.status for r in watched}
    assert Status.DEAD not in {r.status for r in watched}
    assert sim.nodes["n5"].incarnation >= 1


def test_restart_with_higher_generation_is_up_again() -> None:
    sim = cluster(3, seed=4)
    sim.kill("n3")
    run_until(sim, lambda: everyone_sees(sim, "n3", DOWN), 8)
    old = sim.nodes["n1"].entry("n3", sim.now("n1"))
    sim.start("n3", seeds=["n1"], generation=2)
    run_until(sim, lambda: all_up(sim, ["n1", "n2", "n3"]), 5)
    assert sim.nodes["n2"].entry("n3", sim.now("n2")).generation == 2
    # Its previous life's entry, even fresh, changes nothing.
    sim.nodes["n2"].receive([old], sim.now("n2"))
    assert sim.nodes["n2"].entry("n3", sim.now("n2")).generation == 2
    assert sim.state("n2", "n3") is UP


def test_a_node_whose_state_was_reset_takes_a_life_after_the_one_the_cluster_knows() -> None:
    view = solo("n1")  # generation 1, but the cluster buried life 7
    view.hear([rumor("n1", Status.DEAD, generation=7)], now=10.0)
    assert view.generation == 8
    other = solo("n2")
    other.hear([rumor("n1", Status.DEAD, generation=7)], now=10.0)
    other.hear(view.rumors_for(other.address, 10.0), now=10.0)
    assert other.state_of("n1", 10.0) is UP


def test_a_partition_heals_and_every_node_is_up_again() -> None:
    sim = RoundSim.formed(8, seed=9)
    for _ in range(3):
        sim.step()
    left, right = ["n1", "n2", "n3", "n4"], ["n5", "n6", "n7", "n8"]
    sim.split(left, right)
    run_until(sim, lambda: all(sim.state(a, b) is DOWN and sim.state(b, a) is DOWN
                               for a in left for b in right), 12)
    assert all(sim.state(a, b) is UP for a in left for b in left if a != b)
    sim.heal()
    # Each node tries one dead node every `reconnect` seconds; the first contact tells
    # both sides they are thought dead, they refute, and the news spreads.
    run_until(sim, lambda: all_up(sim, left + right), int(CFG.reconnect) + 10)


def test_a_dead_or_departed_node_is_forgotten_after_a_day() -> None:
    view = solo()
    view.receive([entry("n2", 0.0), entry("n3", 0.0)], now=0.0)
    view.hear([rumor("n2", Status.DEAD)], now=0.0)
    view.choose_targets(CFG.forget_after - 1)
    assert view.state_of("n2", CFG.forget_after - 1) is DOWN
    view.choose_targets(CFG.forget_after + 1)
    assert view.state_of("n2", CFG.forget_after + 1) is None
    assert view.members() == 2


# ------------------------------------------------------------------ leaving


def test_leave_spreads_and_the_node_is_left_everywhere() -> None:
    sim = cluster(5, seed=5)
    n5 = sim.nodes["n5"]
    now = sim.now("n5")
    window = n5.leave(now)
    assert window[0].leaving and window[0].node_id == "n5"
    targets = n5.leave_targets(now, limit=1)  # tell only one: gossip does the rest
    assert len(targets) == 1 and targets[0] != addr("n5")
    told = sim.by_address[targets[0]]
    sim.nodes[told].receive(window, sim.now(told))
    sim.nodes[told].hear(n5.rumors_for(targets[0], now), sim.now(told))
    sim.kill("n5")
    assert sim.state(told, "n5") is LEFT
    run_until(sim, lambda: everyone_sees(sim, "n5", LEFT), 3)
    assert all(addr("n5") not in sim.nodes["n1"].choose_targets(sim.now("n1")) for _ in range(10))


def test_a_leaving_node_does_not_refute_its_departure() -> None:
    view = solo("n1")
    view.leave(10.0)
    view.hear([rumor("n1", Status.LEFT)], now=10.0)
    assert view.incarnation == 0 and view.state_of("n1", 10.0) is LEFT


def test_blocked_node_is_shown_blocked_and_still_gossiped_with() -> None:
    sim = cluster(3, seed=6)
    sim.nodes["n2"].set_blocked(True, sim.now("n2"))
    assert sim.state("n2", "n2") is BLOCKED
    run_until(sim, lambda: sim.state("n1", "n2") is BLOCKED and sim.state("n3", "n2") is BLOCKED, 4)
    n1 = sim.nodes["n1"]
    assert any(addr("n2") in n1.choose_targets(sim.now("n1")) for _ in range(30))
    sim.nodes["n2"].set_blocked(False, sim.now("n2"))
    run_until(sim, lambda: sim.state("n1", "n2") is UP, 4)


# ------------------------------------------------------------------ choosing targets


def test_one_random_peer_per_round_never_a_dead_or_departed_one() -> None:
    view = solo()
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 12)], now=0.0)
    view.hear([rumor("n2", Status.DEAD)], now=0.0)
    view.receive([entry("n3", 0.0, leaving=True)], now=0.1)
    picked = set()
    for k in range(200):
        targets = view.choose_targets(now=0.1 + k * 0.01)
        assert len(targets) == 1
        picked.update(targets)
    assert picked == {addr(f"n{i}") for i in range(4, 12)}


def test_news_is_pushed_to_more_peers_only_while_there_is_some() -> None:
    view = solo()
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 30)], now=0.0)
    while view.rumors:
        view.rumors.take(8, 1)
    assert view.push_targets(1.0) == []
    view.hear([rumor("n9", Status.SUSPECT)], now=1.0)
    pushed = view.push_targets(1.0)
    assert 1 <= len(pushed) <= CFG.fanout and addr("n1") not in pushed


def test_stale_entry_is_exchanged_with_once_per_interval_oldest_first() -> None:
    view = solo()
    fresh = [entry(f"n{i}", 0.0) for i in range(2, 10)]
    view.receive(fresh + [entry("n20", 5.1), entry("n21", 6.0)], now=100.0)
    targets = view.choose_targets(100.0)
    assert len(targets) == 2 and targets[1] == addr("n21")  # random peer, then stale
    assert view.choose_targets(100.5)[1:] == [addr("n20")]
    assert len(view.choose_targets(100.9)) == 1  # both exchanged with within the interval
    view.receive([entry("n21", 0.0)], now=101.0)  # n21 answered: fresh again
    view.contact_succeeded(addr("n21"), now=101.0)
    targets = view.choose_targets(101.6)
    assert addr("n20") in targets and addr("n21") not in targets[1:]


def test_an_old_entry_alone_never_makes_a_node_down() -> None:
    view = solo()
    view.receive([entry("n2", age=0.0)], now=0.0)
    assert view.state_of("n2", 10_000.0) is UP  # only failed probes do


def test_unknown_seed_is_retried_with_exponential_backoff() -> None:
    view = solo()
    view.receive([entry("n2", 0.0)], now=0.0)
    view.add_seed("seed:1")
    view.add_seed(view.address)  # self is never a seed
    now, tries = 0.0, []
    while now < 120.0:
        targets = view.choose_targets(now)
        assert len(targets) == len(set(targets)) and view.address not in targets
        if "seed:1" in targets:
            tries.append(now)
            assert view.contact_failed("seed:1", now) == []  # not a member: nobody probes it
        view.receive([entry("n2", 0.0)], now)  # n2 stays live throughout
        now = round(now + 0.25, 2)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(gaps[5:]) == {30.0}
    view.contact_succeeded("seed:1", now)  # it answered (under another name): stop
    assert "seed:1" not in view.choose_targets(now)


def test_identified_seed_is_a_normal_peer() -> None:
    view = solo()
    view.add_seed(addr("n2"))
    assert view.choose_targets(0.0) == [addr("n2")]
    view.receive([entry("n2", 0.0), entry("n3", 0.0)], now=0.0)
    counts = {addr("n2"): 0, addr("n3"): 0}
    for k in range(100):
        (target,) = view.choose_targets(k * 0.01)
        counts[target] += 1
    assert min(counts.values()) > 20


def test_without_live_peers_seeds_and_dead_nodes_are_retried_with_backoff() -> None:
    view = solo()
    view.add_seed("seed:1")
    view.receive([entry("n2", 0.0), entry("n3", 0.0)], now=0.0)
    view.hear([rumor("n2", Status.DEAD), rumor("n3", Status.DEAD)], now=0.0)
    for a in (addr("n2"), addr("n3"), "seed:1"):
        assert view.contact_failed(a, now=0.0) == []  # dead or unknown: nothing to probe
    assert view.choose_targets(0.5) == []
    targets = view.choose_targets(1.0)
    assert targets[0] == "seed:1" and len(targets) == 2  # all due seeds + one dead node
    down_tried = targets[1]
    view.contact_failed("seed:1", 1.0)
    view.contact_failed(down_tried, 1.0)
    (other,) = view.choose_targets(1.5)  # the other dead node is still due
    assert other != down_tried and other in (addr("n2"), addr("n3"))


def test_with_live_peers_one_dead_node_is_tried_every_reconnect_interval() -> None:
    view = solo(now=0.0)
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 6)], now=0.0)
    view.hear([rumor("n5", Status.DEAD), rumor("n4", Status.LEFT)], now=0.0)
    tried = [t for t in range(0, 60) if addr("n5") in view.choose_targets(float(t))]
    assert tried == [10, 20, 30, 40, 50]  # and never the node that left
