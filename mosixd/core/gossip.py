"""Gossip: who is in the cluster, how loaded, and who is suspect, down or gone. Sans-IO.

Two kinds of news travel on the same messages.

*Load* travels MOSIX-style, push-pull. Every round a node exchanges its *window* (its own
entry plus the freshest entries it knows of others) with one random peer, and both sides
keep, per node, the freshest entry they have seen. Entries carry an *age*, not a
timestamp: on arrival the age is turned into a birth time on the local clock, and on
departure back into an age, so the clocks of the nodes never need to agree.

*Membership* travels SWIM-style, as rumors (``mosixd.core.rumors``) piggybacked on the
same exchanges and, while there is news, pushed to ``fanout`` more peers a round. The
round's exchange is SWIM's direct probe; when it fails the node asks ``helpers`` others to
probe the peer for it (so one bad link does not condemn a healthy node); when they fail
too, the peer is *suspect* and the rumor says so, with the peer's incarnation. The node
that suspects keeps probing, directly and through helpers, once a round; a suspect that
hears of the suspicion refutes it with a higher incarnation, and every message to a
suspect or dead node tells it what it is accused of, so it hears at the first contact.
After ``suspect_rounds`` more failed rounds the prober declares the peer *dead*. A node
that stops says it *left*. An age never makes a node down by itself: an old entry only
makes its node worth an exchange, whose failure starts the same probe.

This module does no I/O and reads no clock: the daemon passes ``now`` (a local monotonic
time in seconds) to every call, sends what ``outgoing``/``rumors_for`` return to the
addresses ``choose_targets``/``push_targets`` name, relays indirect probes to the helpers
``contact_failed`` names, and feeds back what it hears with ``receive``, ``hear``,
``contact_succeeded`` and ``probe_result``. Randomness comes from an injected
``random.Random``, so tests and simulations are reproducible.
"""

from __future__ import annotations

import collections
import enum
import itertools
import math
import operator
import random
import re
from dataclasses import dataclass
from typing import Iterable

from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor, RumorQueue, Status, retransmit_limit

# The stale scan looks at this many entries per round, so a round costs the same however
# large the cluster.
_SWEEP = 16
# Tries at picking a random live peer before scanning the whole table: in a healthy
# cluster almost every entry is live, so the scan is only paid when most are down.
_PICK_TRIES = 8
# Suspects this node probes in one round, at most: it probes only those it suspected (or
# failed to reach) itself, which is rarely more than one.
_PROBES_PER_ROUND = 4
# Load of a node known by a rumor only: no capacity, so placement never picks it.
_UNKNOWN_LOAD = LoadVector(cpus=0, speed=0.0)
_GONE = (Status.DEAD, Status.LEFT)


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing and size of the gossip; times are in seconds."""

    interval: float = 1.0  # seconds between rounds
    window: int = 20  # entries sent per exchange, own entry included
    stale_after: float = 5.0  # an entry older than this (scaled, see _scale) -> exchange with it
    suspect_rounds: int = 2  # failed probe rounds after a suspicion before declaring death
    helpers: int = 3  # others asked to probe a peer this node failed to reach
    fanout: int = 2  # more peers told each round while there is news
    rumors_per_message: int = 8
    retransmit: float = 1.5  # a rumor is retold retransmit x log2(N + 1) times by each node
    reconnect: float = 10.0  # seconds between tries at a dead node: how partitions heal
    forget_after: float = 86400.0  # a dead or departed node is dropped from the table after this
    # MOSIX's limit; it bounds a node's table (and memory) whatever key holders announce.
    max_members: int = 65_535
    # Under TLS: a node id, or a new address of one, enters the table only once a
    # certificate vouches for it (its own exchange); what others say of it waits, bounded.
    vouch: bool = False
    max_unvouched: int = 64
    retry_min: float = 1.0  # backoff for unreachable seeds
    retry_max: float = 30.0


class NodeState(str, enum.Enum):
    """What a node looks like from here."""

    UP = "up"
    BLOCKED = "blocked"  # up, but takes no guest tasks
    SUSPECT = "suspect"  # failed to answer; being probed, may refute
    DOWN = "down"  # confirmed dead
    LEFT = "left"  # said it leaves


@dataclass(frozen=True, slots=True)
class Entry:
    """One node's report about itself, as it travels; ``age`` is relative to the sender."""

    node_id: str
    address: str  # "host:port" peers use to reach that node
    generation: int  # grows each time that node restarts
    incarnation: int  # grows each time that node refutes a suspicion within one life
    age: float  # seconds since its node produced it
    blocked: bool
    leaving: bool
    load: LoadVector


# A frozen dataclass assigns each field through object.__setattr__ in __init__, which
# doubles the cost of building windows of thousands of entries; _entry fills the slots
# directly (same object, same immutability afterwards).
_new = object.__new__
_SETTERS = tuple(getattr(Entry, name).__set__ for name in (
    "node_id", "address", "generation", "incarnation", "age", "blocked", "leaving", "load"))
(_set_id, _set_address, _set_generation, _set_incarnation, _set_age, _set_blocked, _set_leaving,
 _set_load) = _SETTERS


def _entry(node_id: str, address: str, generation: int, incarnation: int, age: float,
           blocked: bool, leaving: bool, load: LoadVector) -> Entry:
    e = _new(Entry)
    _set_id(e, node_id)
    _set_address(e, address)
    _set_generation(e, generation)
    _set_incarnation(e, incarnation)
    _set_age(e, age)
    _set_blocked(e, blocked)
    _set_leaving(e, leaving)
    _set_load(e, load)
    return e


@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of what this node knows, for mosmon and mosctl."""

    id: str
    address: str
    state: NodeState
    load: LoadVector
    age: float
    generation: int
    is_self: bool


class _Record:
    """What this node knows of another: its newest load entry and its membership status."""

    __slots__ = ("entry", "born", "reported", "generation", "incarnation", "status", "since",
                 "prober", "failures", "probing", "probed_at")

    def __init__(self, entry: Entry, born: float, reported: bool, status: Status) -> None:
        self.entry = entry  # its age field is stale; ``born`` is what counts
        self.born = born
        self.reported = reported  # False: known from a rumor only, no load yet
        self.generation = entry.generation  # the membership key, which rumors may raise
        self.incarnation = entry.incarnation
        self.status = status
        self.since = born  # when the status was set, on the local clock
        self.prober = False  # this node probes it each round (it failed to reach it)
        self.failures = 0  # failed probe rounds since this node became a prober
        self.probing = float("-inf")  # an indirect probe in flight since then
        self.probed_at = float("-inf")  # last exchange for being stale

    def key(self) -> tuple[int, int, int]:
        return (self.generation, self.incarnation, self.status)

    def rumor(self) -> Rumor:
        return Rumor(self.entry.node_id, self.entry.address, self.generation, self.incarnation,
                     self.status)


_born = operator.attrgetter("born")


def _natural(node_id: str) -> tuple[str | int, ...]:
    """Sort key putting n2 before n10 (re.split alternates text and digit runs)."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", node_id)))


def _state(rec: _Record) -> NodeState:
    status = rec.status
    if status is Status.ALIVE:
        return NodeState.BLOCKED if rec.entry.blocked else NodeState.UP
    if status is Status.SUSPECT:
        return NodeState.SUSPECT
    return NodeState.DOWN if status is Status.DEAD else NodeState.LEFT


class GossipView:
    """One node's gossip state: its own entry, and what it knows of every other node."""

    def __init__(self, node_id: str, address: str, config: GossipConfig, now: float, *,
                 generation: int, load: LoadVector, rng: random.Random) -> None:
        self.node_id = node_id
        self.address = address
        self.config = config
        self.generation = generation
        self.incarnation = 0
        self._rng = rng
        self._load = load
        self._blocked = False
        self._leaving = False
        self._nodes: dict[str, _Record] = {}  # every other node heard of, and not forgotten
        self._ids: list[str] = []  # the same ids, indexable for random picks
        self._by_address: dict[str, str] = {}
        self._suspects: dict[str, _Record] = {}  # records with status SUSPECT
        self._gone: dict[str, _Record] = {}  # records with status DEAD or LEFT
        self._seeds: list[str] = []
        self._unanswered: set[str] = set()  # seeds never identified nor answered
        self._backoff: dict[str, tuple[float, float]] = {}  # address -> (delay, next try)
        self._next_reconnect = now + config.reconnect
        # Status changes, newest last, for the daemon to log; bounded, as nobody may read it.
        self.changes: collections.deque[tuple[str, NodeState]] = collections.deque(maxlen=256)
        self.turned_away = 0  # entries and rumors of new nodes dropped: the table was full
        # Under config.vouch: node id -> address heard second-hand, for the daemon to check
        # with the node itself; oldest first, bounded.
        self.unvouched: dict[str, str] = {}
        self.rumors = RumorQueue()
        self.rumors.add(self._own_rumor())  # a join is news
        # The window is kept incrementally: the last one sent plus the entries changed
        # since contain the new freshest, unless a kept entry got older (a restart) or
        # left the window's pool (a death).
        self._top: list[_Record] = []
        self._touched: dict[str, _Record] = {}
        self._rescan = True
        self._sweep = 0

    # --- own entry -------------------------------------------------------------------

    def set_load(self, load: LoadVector, now: float) -> None:
        """Refresh the own load; it goes out with the next window (own entry: age 0)."""
        self._load = load

    def set_blocked(self, blocked: bool, now: float) -> None:
        """Refuse (or accept again) guest tasks; others see this node as BLOCKED."""
        self._blocked = blocked

    def _own(self) -> Entry:
        # Produced afresh whenever it is sent, hence age 0.
        return _entry(self.node_id, self.address, self.generation, self.incarnation, 0.0,
                      self._blocked, self._leaving, self._load)

    def _own_rumor(self) -> Rumor:
        status = Status.LEFT if self._leaving else Status.ALIVE
        return Rumor(self.node_id, self.address, self.generation, self.incarnation, status)

    # --- states ----------------------------------------------------------------------

    def _scale(self) -> float:
        # A window carries only `window` of the n entries, so a given node's load reaches
        # a given peer about n/window times less often than in a cluster that fits in one
        # window: only an entry older than that is worth an exchange of its own.
        return max(1.0, (len(self._nodes) + 1) / self.config.window)

    def state_of(self, node_id: str, now: float) -> NodeState | None:
        """The state of ``node_id`` as seen from here, or None if never heard of."""
        if node_id == self.node_id:
            if self._leaving:
                return NodeState.LEFT
            return NodeState.BLOCKED if self._blocked else NodeState.UP
        rec = self._nodes.get(node_id)
        return None if rec is None else _state(rec)

    def node_at(self, address: str) -> str | None:
        """The id of the node known at ``address``, if any."""
        return self._by_address.get(address)

    def knows(self, address: str) -> bool:
        """Whether ``address`` is a member's: the only addresses this node probes for others."""
        return address in self._by_address

    def members(self) -> int:
        """Nodes in the table, self included (dead and departed ones until forgotten)."""
        return len(self._nodes) + 1

    # --- what to send, and to whom ---------------------------------------------------

    def outgoing(self, now: float) -> list[Entry]:
        """The window to send: own entry first (age 0), then the freshest others."""
        window = [self._own()]
        for rec in self._freshest():  # the hot path of big windows: no call per entry
            e = rec.entry
            window.append(_entry(e.node_id, e.address, e.generation, e.incarnation,
                                 now - rec.born, e.blocked, e.leaving, e.load))
        return window

    def rumors_for(self, address: str, now: float) -> list[Rumor]:
        """The rumors to put on a message to ``address``: the least told of the queue, and
        what the peer itself is accused of, if anything, so that it can refute."""
        limit = retransmit_limit(len(self._nodes) + 1, self.config.retransmit)
        out = self.rumors.take(self.config.rumors_per_message, limit)
        accused = self._nodes.get(self._by_address.get(address, ""))
        if (accused is not None and accused.status in (Status.SUSPECT, Status.DEAD)
                and all(r.node_id != accused.entry.node_id for r in out)):
            out.append(accused.rumor())
        return out

    def _eligible(self, rec: _Record) -> bool:
        return rec.reported and rec.status <= Status.SUSPECT

    def _freshest(self) -> list[_Record]:
        k = self.config.window - 1
        nodes, touched = self._nodes, self._touched
        if k >= len(nodes):
            touched.clear()
            self._rescan = True  # nothing was selected, so nothing to build on next time
            return sorted((r for r in nodes.values() if self._eligible(r)), key=_born,
                          reverse=True)
        if self._rescan:
            pool: Iterable[_Record] = nodes.values()
        else:
            pool = {*self._top, *touched.values()}
        self._top = sorted((r for r in pool if self._eligible(r)), key=_born, reverse=True)[:k]
        touched.clear()
        self._rescan = False
        return self._top

    def choose_targets(self, now: float) -> list[str]:
        """Addresses to exchange with this round.

        One random peer not known dead; seeds never identified (with backoff while they
        fail); if no peer is live, every due seed and one due dead node, so a partitioned
        or restarted node finds its way back, and otherwise one dead node every
        ``reconnect`` seconds, so partitions heal; the suspects this node probes; and at
        most one peer whose entry is stale.
        """
        self._forget(now)
        targets: list[str] = []
        peer = self._random_member()
        if peer is not None:
            targets.append(peer.entry.address)
            targets += [a for a in self._seeds
                        if a in self._unanswered and a not in self._by_address
                        and self._due(a, now)]
            if now >= self._next_reconnect and self._gone:
                self._next_reconnect = now + self.config.reconnect
                dead = [r for r in self._gone.values() if r.status is Status.DEAD]
                if dead:
                    targets.append(self._rng.choice(dead).entry.address)
        else:
            targets += [a for a in self._seeds if self._due(a, now)]
            dead = [r.entry.address for r in self._gone.values()
                    if r.status is Status.DEAD and r.entry.address not in targets
                    and self._due(r.entry.address, now)]
            if dead:
                targets.append(self._rng.choice(dead))
        targets += self._suspects_to_probe(now)
        stale = self._stale(now, targets)
        if stale is not None:
            targets.append(stale)
        return [a for a in dict.fromkeys(targets) if a != self.address]

    def push_targets(self, now: float) -> list[str]:
        """While there is news to tell, ``fanout`` random peers to push it to."""
        if not self.rumors or not self._ids:
            return []
        picked = {self._random_member() for _ in range(self.config.fanout)}
        return [r.entry.address for r in picked if r is not None]

    def _due(self, address: str, now: float) -> bool:
        backoff = self._backoff.get(address)
        return backoff is None or backoff[1] <= now

    def _random_member(self) -> _Record | None:
        """A random peer not known dead or departed (suspects included: an exchange with
        one that lives lets it refute)."""
        ids, nodes = self._ids, self._nodes
        if len(self._gone) >= len(ids):
            return None
        for _ in range(_PICK_TRIES):
            rec = nodes[ids[self._rng.randrange(len(ids))]]
            if rec.status <= Status.SUSPECT:
                return rec
        live = [r for r in nodes.values() if r.status <= Status.SUSPECT]
        return self._rng.choice(live) if live else None

    def _suspects_to_probe(self, now: float) -> list[str]:
        # A node that holds a suspicion it did not make probes the suspect itself once the
        # suspicion is older than a spread to the whole cluster should take: its prober
        # may have died too.
        if not self._suspects:
            return []
        backstop = (self.config.suspect_rounds + 2 + 2 * math.log2(len(self._nodes) + 1)) \
            * self.config.interval
        out: list[str] = []
        for rec in self._suspects.values():
            if not rec.prober and now - rec.since > backstop:
                rec.prober, rec.failures = True, 0
            if rec.prober and not self._in_flight(rec, now) and len(out) < _PROBES_PER_ROUND:
                out.append(rec.entry.address)
        return out

    def _in_flight(self, rec: _Record, now: float) -> bool:
        # A probe result that never came back (a lost reply) stops counting after a while.
        return now - rec.probing < 3 * self.config.interval

    def _stale(self, now: float, taken: list[str]) -> str | None:
        # A stale entry is alive as far as we know, but its news is getting old:
        # exchanging with it directly either refreshes it or starts a probe.
        ids, n = self._ids, len(self._ids)
        if not n:
            return None
        start, span = self._sweep % n, min(n, _SWEEP)
        self._sweep = start + span
        old_after = self.config.stale_after * self._scale()
        best: _Record | None = None
        for i in range(span):
            rec = self._nodes[ids[(start + i) % n]]
            if (rec.status is Status.ALIVE
                    and now - rec.born > old_after
                    and now - rec.probed_at >= self.config.interval
                    and rec.entry.address not in taken
                    and (best is None or rec.born < best.born)):
                best = rec
        if best is None:
            return None
        best.probed_at = now
        return best.entry.address

    def _helpers(self, target: _Record) -> list[str]:
        k, ids, nodes = self.config.helpers, self._ids, self._nodes
        picked: dict[str, None] = {}
        for _ in range(4 * k):  # random tries first: cheap in a big, mostly healthy table
            if len(picked) >= k or not ids:
                break
            rec = nodes[ids[self._rng.randrange(len(ids))]]
            if rec.status is Status.ALIVE and rec is not target:
                picked[rec.entry.address] = None
        if len(picked) < k:
            others = [r.entry.address for r in nodes.values()
                      if r.status is Status.ALIVE and r is not target
                      and r.entry.address not in picked]
            picked.update(dict.fromkeys(self._rng.sample(others, min(k - len(picked), len(others)))))
        return list(picked)

    # --- what comes back -------------------------------------------------------------

    def _hearsay(self, node_id: str, address: str, sender: str | None) -> bool:
        """Under config.vouch, whether news of ``node_id`` at ``address`` must wait for that
        node to prove itself (it is not the sender, and this node does not know it there)."""
        if node_id == sender:
            self.unvouched.pop(node_id, None)
            return False
        if not self.config.vouch or node_id == self.node_id:
            return False
        rec = self._nodes.get(node_id)
        if rec is not None and rec.entry.address == address:
            return False
        if node_id not in self.unvouched:
            if len(self.unvouched) >= self.config.max_unvouched:
                self.turned_away += 1
                return True
        self.unvouched[node_id] = address
        return True

    def take_unvouched(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (node id, address) pairs heard second-hand, oldest first, for the
        daemon to check with the node itself; they are forgotten here."""
        taken = list(itertools.islice(self.unvouched.items(), limit))
        for node_id, _ in taken:
            del self.unvouched[node_id]
        return taken

    def receive(self, entries: Iterable[Entry], now: float, sender: str | None = None) -> None:
        """Merge a peer's window: per node, the freshest entry of its newest incarnation.

        An entry also says its node was alive (or leaving) in that incarnation, which
        revives a suspect or dead node only at a higher incarnation or generation.
        ``sender``: the node a certificate proved sent it (see GossipConfig.vouch)."""
        nodes, touched = self._nodes, self._touched
        for e in entries:
            if self.config.vouch and self._hearsay(e.node_id, e.address, sender):
                continue
            age = e.age
            born = now - age if age > 0.0 else now  # an age < 0 is a sender's bug
            rec = nodes.get(e.node_id)
            claim = Status.LEFT if e.leaving else Status.ALIVE
            if rec is None:
                if e.node_id == self.node_id:  # only this node speaks for itself
                    continue
                if len(nodes) + 1 >= self.config.max_members:
                    self.turned_away += 1
                else:
                    rec = self._add(e, born, True, claim)
                    if claim is Status.ALIVE:
                        touched[e.node_id] = rec
                continue
            life = (e.generation, e.incarnation)
            known = (rec.generation, rec.incarnation)
            if life < known:
                continue  # news from a previous life or incarnation
            if life > known or claim > rec.status:
                rec.generation, rec.incarnation = life
                if rec.status is not claim:  # a departure, or a comeback: news to retell
                    self._set_status(rec, claim, now)
                    self.rumors.add(rec.rumor())
            elif rec.status in _GONE:
                continue  # a dead node's load is of no use
            elif rec.reported and born <= rec.born:
                continue  # the common case: nothing new
            self._take(rec, e, born)

    def _take(self, rec: _Record, e: Entry, born: float) -> None:
        old = rec.entry
        if born < rec.born and rec.reported:
            self._rescan = True  # a restart born earlier: redo the window in full
        if e.address != old.address:  # restarted elsewhere
            self._move(rec, e.address)
        rec.entry = e
        rec.born = born
        rec.reported = True
        if rec.status <= Status.SUSPECT:
            self._touched[e.node_id] = rec

    def hear(self, rumors: Iterable[Rumor], now: float, sender: str | None = None) -> None:
        """Take in membership rumors; news is retold, and a rumor that this node is suspect
        or dead is refuted with a higher incarnation."""
        nodes = self._nodes
        for r in rumors:
            if r.node_id == self.node_id:
                self._about_me(r)
                continue
            if self.config.vouch and self._hearsay(r.node_id, r.address, sender):
                continue
            rec = nodes.get(r.node_id)
            if rec is None and len(nodes) + 1 >= self.config.max_members:
                self.turned_away += 1
                continue
            if rec is None:
                placeholder = _entry(r.node_id, r.address, r.generation, r.incarnation, 0.0,
                                     False, False, _UNKNOWN_LOAD)
                rec = self._add(placeholder, now, False, r.status)
                self.rumors.add(r)
                continue
            if r.key() <= rec.key():
                continue
            if r.generation > rec.entry.generation:  # a new life: its old load means nothing
                if r.address != rec.entry.address:
                    self._move(rec, r.address)
                rec.entry = _entry(r.node_id, r.address, r.generation, r.incarnation, 0.0,
                                   False, False, _UNKNOWN_LOAD)
                rec.born, rec.reported = now, False
                self._rescan = True
            rec.generation, rec.incarnation = r.generation, r.incarnation
            self._set_status(rec, r.status, now)
            self.rumors.add(r)

    def _about_me(self, r: Rumor) -> None:
        if r.generation > self.generation:
            # The cluster knows a later life of this node id than this one: its state
            # directory was reset. Start a life after that one, or it is never believed.
            self.generation, self.incarnation = r.generation + 1, 0
            self.rumors.add(self._own_rumor())
        elif (r.generation == self.generation and r.status is not Status.ALIVE
              and r.incarnation >= self.incarnation and not self._leaving):
            self.incarnation = r.incarnation + 1  # SWIM's refutation
            self.rumors.add(self._own_rumor())

    def _add(self, e: Entry, born: float, reported: bool, status: Status) -> _Record:
        rec = self._nodes[e.node_id] = _Record(e, born, reported, status)
        self._ids.append(e.node_id)
        self._by_address[e.address] = e.node_id
        if status is Status.SUSPECT:
            self._suspects[e.node_id] = rec
        elif status in _GONE:
            self._gone[e.node_id] = rec
        return rec

    def _move(self, rec: _Record, address: str) -> None:
        node_id = rec.entry.node_id
        if self._by_address.get(rec.entry.address) == node_id:
            del self._by_address[rec.entry.address]
        self._by_address[address] = node_id

    def _set_status(self, rec: _Record, status: Status, now: float) -> None:
        old, node_id = rec.status, rec.entry.node_id
        rec.status, rec.since = status, now
        rec.prober, rec.failures = False, 0
        if old is Status.SUSPECT:
            del self._suspects[node_id]
        elif old in _GONE:
            del self._gone[node_id]
        if status is Status.SUSPECT:
            self._suspects[node_id] = rec
        elif status in _GONE:
            self._gone[node_id] = rec
            self._rescan = True  # it leaves the window's pool
        if old in _GONE and status <= Status.SUSPECT and rec.reported:
            self._touched[node_id] = rec  # back in the window's pool
        self.changes.append((node_id, _state(rec)))

    def add_seed(self, address: str) -> None:
        """A peer known by address only, tried until it answers or is identified."""
        if address != self.address and address not in self._seeds:
            self._seeds.append(address)
            self._unanswered.add(address)

    def contact_succeeded(self, address: str, now: float) -> None:
        """An exchange with ``address`` went through: forget its backoff."""
        self._backoff.pop(address, None)
        self._unanswered.discard(address)
        node_id = self._by_address.get(address)
        if node_id is not None:
            self._nodes[node_id].probing = float("-inf")

    def contact_failed(self, address: str, now: float) -> list[str]:
        """An exchange with ``address`` failed. Returns the helpers to ask to probe it
        (then call ``probe_result``); none when it is not a member worth probing."""
        delay = self._backoff.get(address, (self.config.retry_min / 2, 0.0))[0]
        delay = min(max(delay * 2, self.config.retry_min), self.config.retry_max)
        self._backoff[address] = (delay, now + delay)
        rec = self._nodes.get(self._by_address.get(address, ""))
        if rec is None or rec.status in _GONE or self._in_flight(rec, now):
            return []
        helpers = self._helpers(rec)
        if not helpers:  # nobody to ask: the direct failure is all there is
            self._probe_failed(rec, now)
            return []
        rec.probing = now
        return helpers

    def probe_result(self, address: str, reached: bool, now: float) -> None:
        """What the helpers asked by ``contact_failed`` found: whether any reached it."""
        rec = self._nodes.get(self._by_address.get(address, ""))
        if rec is None:
            return
        rec.probing = float("-inf")
        if not reached:
            self._probe_failed(rec, now)

    def _probe_failed(self, rec: _Record, now: float) -> None:
        if rec.status is Status.ALIVE:
            self._set_status(rec, Status.SUSPECT, now)
            rec.prober = True
            self.rumors.add(rec.rumor())
        elif rec.status is Status.SUSPECT:
            if not rec.prober:
                rec.prober = True  # failed to reach it too: probe it from now on
                return
            rec.failures += 1
            if rec.failures >= self.config.suspect_rounds:
                self._set_status(rec, Status.DEAD, now)
                self.rumors.add(rec.rumor())

    def _forget(self, now: float) -> None:
        if not self._gone:
            return
        old = [r for r in self._gone.values() if now - r.since > self.config.forget_after]
        for rec in old:
            node_id = rec.entry.node_id
            del self._gone[node_id], self._nodes[node_id]
            self._ids.remove(node_id)
            if self._by_address.get(rec.entry.address) == node_id:
                del self._by_address[rec.entry.address]
        if old:
            self._rescan = True

    # --- leaving ---------------------------------------------------------------------

    def leave(self, now: float) -> list[Entry]:
        """Mark this node as leaving; returns the window telling peers so (the rumor that
        it left goes with ``rumors_for``)."""
        self._leaving = True
        self.rumors.add(self._own_rumor())
        return self.outgoing(now)

    def leave_targets(self, now: float, limit: int = 8) -> list[str]:
        """Up to ``limit`` random live peers to tell that this node leaves."""
        live = [r.entry.address for r in self._nodes.values() if r.status is Status.ALIVE]
        return self._rng.sample(live, min(limit, len(live)))

    # --- what the daemon shows -------------------------------------------------------

    def entry(self, node_id: str, now: float) -> Entry | None:
        """The newest entry known for ``node_id``, aged to ``now`` (None if unknown)."""
        if node_id == self.node_id:
            return self._own()
        rec = self._nodes.get(node_id)
        if rec is None:
            return None
        e = rec.entry
        return _entry(e.node_id, e.address, e.generation, e.incarnation, now - rec.born,
                      e.blocked, e.leaving, e.load)

    def view(self, now: float) -> list[NodeView]:
        """Every known node: self first, then the others by id (n2 before n10)."""
        me = NodeView(self.node_id, self.address, self.state_of(self.node_id, now),  # type: ignore[arg-type]
                      self._load, 0.0, self.generation, True)
        others = [
            NodeView(i, r.entry.address, _state(r), r.entry.load, now - r.born,
                     r.generation, False)
            for i, r in sorted(self._nodes.items(), key=lambda kv: _natural(kv[0]))
        ]
        return [me, *others]
