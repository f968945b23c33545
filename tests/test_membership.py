"""Membership news (mosixd.core.rumors) and properties of the SWIM-style failure detector.

The properties run the real ``GossipView`` in the round simulator of ``bench.rounds``, on
clusters, losses and failures that hypothesis chooses.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.rounds import RoundSim, address_of
from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor, RumorQueue, Status, retransmit_limit

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rumor(name: str, status: Status, incarnation: int = 0, generation: int = 1) -> Rumor:
    return Rumor(name, address_of(name), generation, incarnation, status)


# ------------------------------------------------------------------ which rumor wins


def test_news_is_ordered_by_life_then_incarnation_then_gravity() -> None:
    order = [rumor("n1", Status.ALIVE, 0), rumor("n1", Status.SUSPECT, 0), rumor("n1", Status.DEAD, 0),
             rumor("n1", Status.LEFT, 0), rumor("n1", Status.ALIVE, 1), rumor("n1", Status.DEAD, 5),
             rumor("n1", Status.ALIVE, 0, generation=2)]
    assert sorted(order, key=Rumor.key) == order


def test_the_queue_keeps_only_the_newest_rumor_per_node_and_tells_the_least_told_first() -> None:
    queue = RumorQueue()
    queue.add(rumor("n1", Status.SUSPECT))
    queue.add(rumor("n2", Status.SUSPECT))
    assert queue.take(1, limit=10) == [rumor("n1", Status.SUSPECT)]
    queue.add(rumor("n1", Status.DEAD))  # replaces the suspicion, told 0 times so far
    assert len(queue) == 2 and queue.peek("n1") == rumor("n1", Status.DEAD)
    assert {r.node_id for r in queue.take(2, limit=10)} == {"n1", "n2"}


def test_a_rumor_is_told_limit_times_then_dropped() -> None:
    queue = RumorQueue()
    queue.add(rumor("n1", Status.LEFT))
    told = sum(len(queue.take(8, limit=3)) for _ in range(10))
    assert told == 3 and len(queue) == 0 and queue.take(8, limit=3) == []


def test_retransmissions_grow_as_log_n() -> None:
    assert [retransmit_limit(n, 1.5) for n in (1, 15, 1023, 65535)] == [2, 6, 15, 24]


# ------------------------------------------------------------------ properties


def _watch(sim: RoundSim) -> list[Rumor]:
    told: list[Rumor] = []
    sim.meter = lambda sender, entries, rumors: told.extend(rumors)
    return told


@PROPERTY
@given(n=st.integers(3, 40), loss=st.sampled_from([0.0, 0.01, 0.05]), seed=st.integers(0, 10**6),
       rounds=st.integers(10, 40))
def test_no_live_node_is_ever_declared_dead(n: int, loss: float, seed: int, rounds: int) -> None:
    """Every node answers (within the round) except for lost messages: none is ever dead."""
    sim = RoundSim.formed(n, seed=seed, loss=loss)
    told = _watch(sim)
    for _ in range(rounds):
        sim.step()
    assert not [r for r in told if r.status is Status.DEAD]
    assert all(sim.state(o, x) in (NodeState.UP, NodeState.SUSPECT) for o in sim.alive for x in sim.alive
               if o != x)


@PROPERTY
@given(n=st.integers(3, 40), data=st.data(), loss=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 10**6))
def test_a_dead_node_is_confirmed_by_every_live_node(n: int, data: st.DataObject, loss: float, seed: int) -> None:
    names = [f"n{i}" for i in range(1, n + 1)]
    victims = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=max(1, n // 3), unique=True))
    when = data.draw(st.lists(st.integers(0, 6), min_size=len(victims), max_size=len(victims)))
    sim = RoundSim.formed(n, seed=seed, loss=loss)
    told = _watch(sim)
    for r in range(7):
        for victim, at in zip(victims, when):
            if at == r:
                sim.kill(victim)
        sim.step()
    survivors = [x for x in names if x not in victims]
    for _ in range(40):
        if all(sim.state(o, v) is NodeState.DOWN for o in survivors for v in victims):
            break
        sim.step()
    assert all(sim.state(o, v) is NodeState.DOWN for o in survivors for v in victims)
    assert {r.node_id for r in told if r.status is Status.DEAD} <= set(victims)  # nobody else
    # Under loss a survivor may be suspect for a moment (it refutes); never down.
    assert all(sim.state(o, x) in (NodeState.UP, NodeState.SUSPECT) for o in survivors for x in survivors if o != x)


@PROPERTY
@given(n=st.integers(4, 30), cut=st.integers(1, GossipConfig().suspect_rounds),
       loss=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 10**6), data=st.data())
def test_a_refuted_suspicion_never_becomes_a_death(n: int, cut: int, loss: float, seed: int,
                                                   data: st.DataObject) -> None:
    """A node cut off for a few rounds (no more than a suspicion survives) is suspected at
    most: it hears of it when it is back, refutes, and is up everywhere again."""
    names = [f"n{i}" for i in range(1, n + 1)]
    victim = data.draw(st.sampled_from(names))
    sim = RoundSim.formed(n, seed=seed, loss=loss)
    told = _watch(sim)
    for _ in range(2):
        sim.step()
    sim.split([victim], [x for x in names if x != victim])
    for _ in range(cut):
        sim.step()
    sim.heal()
    for _ in range(30):
        sim.step()
    about = [r for r in told if r.node_id == victim]
    assert Status.DEAD not in {r.status for r in about}
    assert all(sim.state(o, victim) is NodeState.UP for o in names if o != victim)
    if Status.SUSPECT in {r.status for r in about}:
        assert sim.nodes[victim].incarnation >= 1  # it was suspected, heard of it and refuted


@pytest.mark.parametrize("loss", [0.0, 0.01])
def test_a_graceful_leave_reaches_every_node_without_a_probe(loss: float) -> None:
    sim = RoundSim.formed(64, seed=3, loss=loss)
    told = _watch(sim)
    for _ in range(2):
        sim.step()
    leaver = sim.nodes["n10"]
    now = sim.now("n10")
    window = leaver.leave(now)
    for address in leaver.leave_targets(now):
        peer = sim.by_address[address]
        sim.nodes[peer].receive(window, sim.now(peer))
        sim.nodes[peer].hear(leaver.rumors_for(address, now), sim.now(peer))
    sim.kill("n10")
    for _ in range(10):
        sim.step()
    assert all(sim.state(o, "n10") is NodeState.LEFT for o in sim.alive)
    assert not [r for r in told if r.node_id == "n10" and r.status in (Status.SUSPECT, Status.DEAD)]


def test_the_table_is_capped_whatever_peers_announce() -> None:
    config = GossipConfig(max_members=50)
    view = GossipView("n1", "127.0.1.1:7000", config, 0.0, generation=1,
                      load=LoadVector(),
                      rng=random.Random(1))
    fake = [Entry(f"evil{i}", f"198.18.{i // 250}.{i % 250}:1", 1, 0, 0.0, False, False,
                  LoadVector()) for i in range(100_000)]
    view.receive(fake, 1.0)
    view.hear([Rumor(f"ghost{i}", "198.19.0.1:1", 1, 0, Status.ALIVE) for i in range(1000)], 1.0)
    assert view.members() == 50 and view.turned_away == 100_000 - 49 + 1000
    # Known nodes still update: the cap turns away only new ones.
    view.receive([Entry("evil0", "198.18.0.0:1", 1, 0, 0.0, True, False, fake[0].load)], 2.0)
    assert view.state_of("evil0", 2.0) is NodeState.BLOCKED


def _entry(node_id: str, address: str, generation: int = 1) -> Entry:
    return Entry(node_id, address, generation, 0, 0.0, False, False, LoadVector())


def test_under_tls_only_a_node_itself_brings_its_id_or_a_new_address_into_the_table() -> None:
    view = GossipView("n1", "10.0.0.1:7000", GossipConfig(vouch=True, max_unvouched=4), 0.0, generation=1,
                      load=LoadVector(), rng=random.Random(1))
    # n2 speaks for itself (its certificate said so): in.
    view.receive([_entry("n2", "10.0.0.2:7000")], 1.0, sender="n2")
    # n2 tells of n3 and of "evil": hearsay, held for the daemon to check, not in the table.
    view.receive([_entry("n3", "10.0.0.3:7000"), _entry("evil", "10.9.9.9:1")], 1.0, sender="n2")
    view.hear([Rumor("ghost", "10.9.9.8:1", 1, 0, Status.ALIVE)], 1.0, sender="n2")
    assert view.members() == 2 and view.state_of("evil", 1.0) is None and view.state_of("ghost", 1.0) is None
    assert view.unvouched == {"n3": "10.0.0.3:7000", "evil": "10.9.9.9:1", "ghost": "10.9.9.8:1"}
    # n2 says n2 now lives at another address: it may; a third party saying so may not.
    view.receive([_entry("n2", "10.6.6.6:1", generation=2)], 2.0, sender="n3")
    assert view.entry("n2", 2.0).address == "10.0.0.2:7000"  # type: ignore[union-attr]
    assert view.node_at("10.6.6.6:1") is None
    # What is known, at the address it is known at, flows from anyone.
    view.receive([Entry("n2", "10.0.0.2:7000", 1, 0, 0.0, True, False, LoadVector())], 3.0, sender=None)
    assert view.state_of("n2", 3.0) is NodeState.BLOCKED
    # The daemon takes what to check, oldest first; n3 then proves itself.
    assert view.take_unvouched(2) == [("n3", "10.0.0.3:7000"), ("evil", "10.9.9.9:1")]
    view.receive([_entry("n3", "10.0.0.3:7000")], 4.0, sender="n3")
    assert view.state_of("n3", 4.0) is NodeState.UP
    # The waiting list is bounded too.
    view.receive([_entry(f"x{i}", f"10.8.0.{i}:1") for i in range(10)], 5.0, sender="n2")
    assert len(view.unvouched) == 4 and view.turned_away > 0


def test_without_tls_news_of_new_nodes_is_taken_as_before() -> None:
    view = GossipView("n1", "10.0.0.1:7000", GossipConfig(), 0.0, generation=1, load=LoadVector(),
                      rng=random.Random(1))
    view.receive([_entry("n3", "10.0.0.3:7000")], 1.0, sender="n2")
    assert view.state_of("n3", 1.0) is NodeState.UP and view.unvouched == {}
