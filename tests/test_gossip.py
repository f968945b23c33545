"""Tests for mosixd.core.gossip: the sans-IO gossip core, driven with explicit clocks."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector

CFG = GossipConfig()  # interval 1, window 20, down 5, suspect 2.5, retry 1..30
UP, DOWN, BLOCKED = NodeState.UP, NodeState.DOWN, NodeState.BLOCKED


def addr(name: str) -> str:
    return f"10.0.0.{name[1:]}:7000"


def lv(load: float = 0.5) -> LoadVector:
    return LoadVector(load=load, cpus=2, mem_total=1 << 30, mem_free=1 << 29, python="3.11.7")


def entry(name: str, age: float, generation: int = 1, *, blocked: bool = False,
          leaving: bool = False, load: float = 0.5) -> Entry:
    return Entry(name, addr(name), generation, age, blocked, leaving, lv(load))


def solo(name: str = "n1", now: float = 100.0, config: GossipConfig = CFG,
         seed: int = 0) -> GossipView:
    return GossipView(name, addr(name), config, now, generation=1, load=lv(),
                      rng=random.Random(seed))


class Sim:
    """Nodes exchanging push-pull in rounds; each node has its own clock offset."""

    def __init__(self, config: GossipConfig = CFG, seed: int = 0) -> None:
        self.config = config
        self.t = 0.0  # the simulation's "true" time; no node sees it
        self.rng = random.Random(seed)
        self.seed = seed
        self.nodes: dict[str, GossipView] = {}
        self.offset: dict[str, float] = {}
        self.alive: set[str] = set()
        self.isolated: set[str] = set()  # reachable by nobody, reaching nobody

    def now(self, name: str) -> float:
        return self.t + self.offset[name]

    def start(self, name: str, seeds: Iterable[str] = (), generation: int = 1) -> GossipView:
        # A (re)started node gets a new clock: monotonic clocks restart at boot.
        self.offset[name] = self.rng.uniform(-1e4, 1e4)
        view = GossipView(name, addr(name), self.config, self.now(name),
                          generation=generation, load=lv(),
                          rng=random.Random(f"{self.seed}-{name}-{generation}"))
        for s in seeds:
            view.add_seed(addr(s))
        self.nodes[name] = view
        self.alive.add(name)
        return view

    def reachable(self, a: str, b: str) -> bool:
        return b in self.alive and (a in self.isolated) == (b in self.isolated)

    def round(self) -> None:
        by_address = {addr(n): n for n in self.nodes}
        for name in sorted(self.alive):
            view, now = self.nodes[name], self.now(name)
            for target in view.choose_targets(now):
                peer = by_address.get(target)
                if peer is not None and self.reachable(name, peer):
                    other, other_now = self.nodes[peer], self.now(peer)
                    other.receive(view.outgoing(now), other_now)
                    view.receive(other.outgoing(other_now), now)
                    view.contact_succeeded(target, now)
                else:
                    view.contact_failed(target, now)
        self.t += self.config.interval

    def states(self, observer: str) -> dict[str, NodeState]:
        return {v.id: v.state for v in self.nodes[observer].view(self.now(observer))}

    def run_until(self, done: Callable[[], bool], max_rounds: int) -> int:
        """Rounds run until done() holds; fails the test after max_rounds."""
        for r in range(max_rounds + 1):
            if done():
                return r
            self.round()
        pytest.fail(f"not done after {max_rounds} rounds")

    def all_up(self, names: Iterable[str]) -> bool:
        names = set(names)
        return all(set(self.states(o)) == names and set(self.states(o).values()) == {UP}
                   for o in names)


def cluster(n: int, config: GossipConfig = CFG, seed: int = 0) -> Sim:
    """n nodes that all know n1 only, run until every view is complete and up."""
    sim = Sim(config, seed)
    sim.start("n1")
    for i in range(2, n + 1):
        sim.start(f"n{i}", seeds=["n1"])
    names = [f"n{i}" for i in range(1, n + 1)]
    sim.run_until(lambda: sim.all_up(names), 15)
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


# ------------------------------------------------------------------ membership


def test_join_through_a_seed() -> None:
    sim = Sim()
    sim.start("n1")
    sim.start("n2", seeds=["n1"])
    sim.start("n3", seeds=["n1"])
    rounds = sim.run_until(lambda: sim.all_up(["n1", "n2", "n3"]), 5)
    assert rounds <= 3


def test_node_learned_through_gossip_is_contacted_directly() -> None:
    sim = Sim(seed=3)
    sim.start("n1")
    sim.start("n2", seeds=["n1"])
    sim.run_until(lambda: sim.all_up(["n1", "n2"]), 3)
    sim.start("n3", seeds=["n1"])  # n2 is never told of n3 by configuration
    sim.run_until(lambda: "n3" in sim.states("n2"), 5)
    assert sim.states("n2")["n3"] is UP
    n2 = sim.nodes["n2"]
    chosen = set()
    for _ in range(20):
        chosen.update(n2.choose_targets(sim.now("n2")))
        sim.round()
    assert addr("n3") in chosen


def test_eight_nodes_converge_all_up() -> None:
    sim = Sim(seed=11)
    sim.start("n1")
    for i in range(2, 9):
        sim.start(f"n{i}", seeds=["n1"])
    names = [f"n{i}" for i in range(1, 9)]
    rounds = sim.run_until(lambda: sim.all_up(names), 10)
    assert rounds <= 6
    for _ in range(10):  # and stays so
        sim.round()
        assert sim.all_up(names)


def test_leave_spreads_and_the_node_is_down() -> None:
    sim = cluster(5, seed=5)
    n5 = sim.nodes["n5"]
    now = sim.now("n5")
    window = n5.leave(now)
    assert window[0].leaving and window[0].node_id == "n5"
    targets = n5.leave_targets(now, limit=1)  # tell only one: gossip does the rest
    assert len(targets) == 1 and targets[0] != addr("n5")
    told = {addr(n): n for n in sim.nodes}[targets[0]]
    sim.nodes[told].receive(window, sim.now(told))
    sim.alive.discard("n5")
    assert sim.states(told)["n5"] is DOWN
    others = [n for n in ("n1", "n2", "n3", "n4") if n != told]
    sim.run_until(lambda: all(sim.states(o)["n5"] is DOWN for o in others), 2)
    assert all(addr("n5") not in sim.nodes["n1"].choose_targets(sim.now("n1"))
               for _ in range(10))


def test_killed_node_is_down_within_five_seconds() -> None:
    sim = cluster(3, seed=2)
    sim.alive.discard("n3")  # stops answering, says nothing
    seen_down: dict[str, float] = {}
    for r in range(1, 6):
        sim.round()
        for o in ("n1", "n2"):
            if o not in seen_down and sim.states(o)["n3"] is DOWN:
                seen_down[o] = r * CFG.interval
    assert set(seen_down) == {"n1", "n2"}
    assert sim.states("n1")["n1"] is UP and sim.states("n1")["n2"] is UP


def test_silent_entry_ages_into_down() -> None:
    view = solo()
    view.receive([entry("n2", age=0.0)], now=0.0)
    assert view.state_of("n2", 4.9) is UP
    assert view.state_of("n2", 5.1) is DOWN
    view.receive([entry("n2", age=0.5)], now=6.0)
    assert view.state_of("n2", 6.0) is UP


def test_failed_contact_is_down_until_newer_news() -> None:
    view = solo()
    view.receive([entry("n2", age=0.0)], now=10.0)
    view.contact_failed(addr("n2"), now=11.0)
    assert view.state_of("n2", 11.0) is DOWN
    view.receive([entry("n2", age=2.0)], now=12.0)  # born 10, before the failure
    assert view.state_of("n2", 12.0) is DOWN
    view.receive([entry("n2", age=0.5)], now=12.0)  # born 11.5, after it
    assert view.state_of("n2", 12.0) is UP


def test_restart_with_higher_generation_is_up_again() -> None:
    sim = cluster(3, seed=4)
    sim.alive.discard("n3")
    sim.run_until(lambda: sim.states("n1")["n3"] is DOWN and sim.states("n2")["n3"] is DOWN, 6)
    old = sim.nodes["n1"].entry("n3", sim.now("n1"))
    sim.start("n3", seeds=["n1"], generation=2)
    sim.run_until(lambda: sim.all_up(["n1", "n2", "n3"]), 5)
    assert sim.nodes["n2"].entry("n3", sim.now("n2")).generation == 2
    # Its previous life's entry, even fresh, changes nothing.
    sim.nodes["n2"].receive([old], sim.now("n2"))
    assert sim.nodes["n2"].entry("n3", sim.now("n2")).generation == 2


def test_partitioned_node_finds_its_way_back() -> None:
    sim = cluster(4, seed=9)
    sim.isolated = {"n4"}
    sim.run_until(lambda: all(sim.states(o)["n4"] is DOWN for o in ("n1", "n2", "n3"))
                  and set(sim.states("n4").values()) == {UP, DOWN}, 10)
    for _ in range(10):
        sim.round()
    sim.isolated = set()
    # n4 sees nobody live: it retries down nodes with backoff (at most retry_max apart).
    sim.run_until(lambda: sim.all_up(["n1", "n2", "n3", "n4"]), 35)


def test_blocked_node_is_shown_blocked_and_still_gossiped_with() -> None:
    sim = cluster(3, seed=6)
    sim.nodes["n2"].set_blocked(True, sim.now("n2"))
    assert sim.states("n2")["n2"] is BLOCKED
    sim.run_until(lambda: sim.states("n1")["n2"] is BLOCKED
                  and sim.states("n3")["n2"] is BLOCKED, 4)
    assert sim.nodes["n1"].state_of("n2", sim.now("n1")) is BLOCKED
    n1 = sim.nodes["n1"]
    assert any(addr("n2") in n1.choose_targets(sim.now("n1")) for _ in range(30))
    sim.nodes["n2"].set_blocked(False, sim.now("n2"))
    sim.run_until(lambda: sim.states("n1")["n2"] is UP, 4)


# ------------------------------------------------------------------ choosing targets


def test_one_random_live_peer_per_round() -> None:
    view = solo()
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 12)], now=0.0)
    view.contact_failed(addr("n2"), now=0.0)
    view.receive([entry("n3", 0.0, leaving=True)], now=0.1)
    picked = set()
    for k in range(200):
        targets = view.choose_targets(now=0.1 + k * 0.01)
        assert len(targets) == 1
        picked.update(targets)
    assert picked == {addr(f"n{i}") for i in range(4, 12)}


def test_suspect_is_probed_once_per_interval_oldest_first() -> None:
    view = solo()
    fresh = [entry(f"n{i}", 0.0) for i in range(2, 10)]
    view.receive(fresh + [entry("n20", 2.6), entry("n21", 3.0)], now=100.0)
    targets = view.choose_targets(100.0)
    assert len(targets) == 2 and targets[1] == addr("n21")  # random peer, then suspect
    assert view.choose_targets(100.5)[1:] == [addr("n20")]  # never probed yet
    assert len(view.choose_targets(100.9)) == 1  # both probed within the interval
    targets = view.choose_targets(101.0)
    assert addr("n21") in targets and len(targets) <= 2
    # The probe answered: n21 is fresh again and no longer suspect.
    view.receive([entry("n21", 0.0)], now=101.0)
    view.contact_succeeded(addr("n21"), now=101.0)
    targets = view.choose_targets(101.6)
    assert addr("n20") in targets and addr("n21") not in targets[1:]


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
            view.contact_failed("seed:1", now)
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


def test_without_live_peers_seeds_and_down_nodes_are_retried_with_backoff() -> None:
    view = solo()
    view.add_seed("seed:1")
    view.receive([entry("n2", 0.0), entry("n3", 0.0)], now=0.0)
    for a in (addr("n2"), addr("n3"), "seed:1"):
        view.contact_failed(a, now=0.0)
    assert view.choose_targets(0.5) == []
    targets = view.choose_targets(1.0)
    assert targets[0] == "seed:1" and len(targets) == 2  # all due seeds + one down node
    down_tried = targets[1]
    view.contact_failed("seed:1", 1.0)
    view.contact_failed(down_tried, 1.0)
    (other,) = view.choose_targets(1.5)  # the other down node is still due
    assert other != down_tried and other in (addr("n2"), addr("n3"))


def test_down_limit_scales_with_cluster_size() -> None:
    view = solo()
    assert view.down_limit() == CFG.down_after
    view.receive([entry(f"n{i}", 0.0) for i in range(2, 101)], now=0.0)
    assert view.down_limit() == pytest.approx(CFG.down_after * 100 / CFG.window)
    assert view.state_of("n2", 20.0) is UP  # 20 s old, but a window carries 1/5 of us
    assert view.state_of("n2", 26.0) is DOWN
