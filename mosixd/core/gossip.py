"""Gossip: who is in the cluster, how loaded, and who is down. Sans-IO.

MOSIX-style push-pull. Every round a node exchanges its *window* (its own entry plus the
freshest entries it knows of others) with one random live peer, and both sides keep, per
node, the freshest entry they have seen. Entries carry an *age*, not a timestamp: on
arrival the age is turned into a birth time on the local clock, and on departure back
into an age, so the clocks of the nodes never need to agree.

This module does no I/O and reads no clock: the daemon passes ``now`` (a local monotonic
time in seconds) to every call, sends what ``outgoing`` returns to the addresses
``choose_targets`` names, and feeds back what it hears with ``receive`` and
``contact_succeeded``/``contact_failed``. Randomness comes from an injected
``random.Random``, so tests and simulations are reproducible.
"""

from __future__ import annotations

import enum
import operator
import random
import re
from dataclasses import dataclass
from typing import Iterable

from mosixd.core.loadvector import LoadVector

# The suspect scan looks at this many entries per round, so a round costs the same however
# large the cluster; every entry is still looked at once every n/16 rounds, well inside
# the suspect limit, which grows as n/window (see _scale).
_SWEEP = 16
# Tries at picking a random live peer before scanning the whole table: in a healthy
# cluster almost every entry is live, so the scan is only paid when most are down.
_PICK_TRIES = 8


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timing and size of the gossip; times are in seconds."""

    interval: float = 1.0  # seconds between rounds
    window: int = 20  # entries sent per exchange, own entry included
    down_after: float = 5.0  # an entry older than this (scaled, see down_limit) -> down
    suspect_after: float = 2.5  # older than this (scaled) -> probe the node directly
    retry_min: float = 1.0  # backoff for unreachable seeds and down nodes
    retry_max: float = 30.0


class NodeState(str, enum.Enum):
    """What a node looks like from here."""

    UP = "up"
    DOWN = "down"
    BLOCKED = "blocked"


@dataclass(frozen=True, slots=True)
class Entry:
    """One node's report about itself, as it travels; ``age`` is relative to the sender."""

    node_id: str
    address: str  # "host:port" peers use to reach that node
    generation: int  # grows each time that node restarts
    age: float  # seconds since its node produced it
    blocked: bool
    leaving: bool
    load: LoadVector


# A frozen dataclass assigns each field through object.__setattr__ in __init__, which
# doubles the cost of building windows of thousands of entries; _entry fills the slots
# directly (same object, same immutability afterwards).
_new = object.__new__
(_set_id, _set_address, _set_generation, _set_age, _set_blocked, _set_leaving,
 _set_load) = (getattr(Entry, name).__set__ for name in (
     "node_id", "address", "generation", "age", "blocked", "leaving", "load"))


def _entry(node_id: str, address: str, generation: int, age: float, blocked: bool,
           leaving: bool, load: LoadVector) -> Entry:
    e = _new(Entry)
    _set_id(e, node_id)
    _set_address(e, address)
    _set_generation(e, generation)
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
    """The newest entry known for another node, with times on the local clock."""

    __slots__ = ("entry", "born", "failed_at", "probed_at")

    def __init__(self, entry: Entry, born: float) -> None:
        self.entry = entry  # its age field is stale; ``born`` is what counts
        self.born = born
        self.failed_at = float("-inf")  # last failed direct contact
        self.probed_at = float("-inf")  # last time it was probed as a suspect


_born = operator.attrgetter("born")


def _natural(node_id: str) -> tuple[str | int, ...]:
    """Sort key putting n2 before n10 (re.split alternates text and digit runs)."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", node_id)))


class GossipView:
    """One node's gossip state: its own entry and the newest entry of every other node."""

    def __init__(self, node_id: str, address: str, config: GossipConfig, now: float, *,
                 generation: int, load: LoadVector, rng: random.Random) -> None:
        self.node_id = node_id
        self.address = address
        self.config = config
        self.generation = generation
        self._rng = rng
        self._load = load
        self._blocked = False
        self._leaving = False
        self._nodes: dict[str, _Record] = {}  # every other node ever heard of
        self._ids: list[str] = []  # the same ids, indexable for random picks
        self._by_address: dict[str, str] = {}
        self._seeds: list[str] = []
        self._unanswered: set[str] = set()  # seeds never identified nor answered
        self._backoff: dict[str, tuple[float, float]] = {}  # address -> (delay, next try)
        # The window is kept incrementally: the last one sent plus the entries changed
        # since contain the new freshest, unless a kept entry got older (a restart).
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
        return _entry(self.node_id, self.address, self.generation, 0.0,
                      self._blocked, self._leaving, self._load)

    # --- limits and states -----------------------------------------------------------

    def _scale(self) -> float:
        # A window carries only `window` of the n entries, so news about a given node
        # reaches a given peer about n/window times less often than in a cluster that fits
        # in one window. Without this factor a big cluster would time everybody out.
        return max(1.0, (len(self._nodes) + 1) / self.config.window)

    def down_limit(self) -> float:
        """Age (seconds) beyond which an entry means its node is down."""
        return self.config.down_after * self._scale()

    @staticmethod
    def _state(rec: _Record, now: float, limit: float) -> NodeState:
        e = rec.entry
        if e.leaving or rec.failed_at >= rec.born or now - rec.born > limit:
            return NodeState.DOWN
        return NodeState.BLOCKED if e.blocked else NodeState.UP

    def state_of(self, node_id: str, now: float) -> NodeState | None:
        """The state of ``node_id`` as seen from here, or None if never heard of."""
        if node_id == self.node_id:
            return NodeState.BLOCKED if self._blocked else NodeState.UP  # never down
        rec = self._nodes.get(node_id)
        return None if rec is None else self._state(rec, now, self.down_limit())

    # --- what to send, and to whom ---------------------------------------------------

    def outgoing(self, now: float) -> list[Entry]:
        """The window to send: own entry first (age 0), then the freshest others."""
        window = [self._own()]
        for rec in self._freshest():  # the hot path of big windows: no call per entry
            e = rec.entry
            window.append(_entry(e.node_id, e.address, e.generation, now - rec.born,
                                 e.blocked, e.leaving, e.load))
        return window

    def _freshest(self) -> list[_Record]:
        k = self.config.window - 1
        nodes, touched = self._nodes, self._touched
        if k >= len(nodes):
            touched.clear()
            self._rescan = True  # nothing was selected, so nothing to build on next time
            return sorted(nodes.values(), key=_born, reverse=True)
        if self._rescan:
            pool: Iterable[_Record] = nodes.values()
        else:
            pool = {*self._top, *touched.values()}
        self._top = sorted(pool, key=_born, reverse=True)[:k]
        touched.clear()
        self._rescan = False
        return self._top

    def choose_targets(self, now: float) -> list[str]:
        """Addresses to exchange with this round.

        One random live peer; seeds never identified (with backoff while they fail); if
        no peer is live, every due seed and one due down node, so a partitioned or
        restarted node finds its way back; and at most one suspect to probe.
        """
        limit = self.down_limit()
        targets: list[str] = []
        peer = self._random_live(now, limit)
        if peer is not None:
            targets.append(peer.entry.address)
            targets += [a for a in self._seeds
                        if a in self._unanswered and a not in self._by_address
                        and self._due(a, now)]
        else:
            targets += [a for a in self._seeds if self._due(a, now)]
            down = [r.entry.address for r in self._nodes.values()
                    if r.entry.address not in targets and self._due(r.entry.address, now)]
            if down:
                targets.append(self._rng.choice(down))
        suspect = self._suspect(now, limit, targets)
        if suspect is not None:
            targets.append(suspect)
        return [a for a in dict.fromkeys(targets) if a != self.address]

    def _due(self, address: str, now: float) -> bool:
        backoff = self._backoff.get(address)
        return backoff is None or backoff[1] <= now

    def _random_live(self, now: float, limit: float) -> _Record | None:
        ids, nodes, down = self._ids, self._nodes, NodeState.DOWN
        if not ids:
            return None
        for _ in range(_PICK_TRIES):
            rec = nodes[ids[self._rng.randrange(len(ids))]]
            if self._state(rec, now, limit) is not down:
                return rec
        live = [r for r in nodes.values() if self._state(r, now, limit) is not down]
        return self._rng.choice(live) if live else None

    def _suspect(self, now: float, limit: float, taken: list[str]) -> str | None:
        # A suspect is alive as far as we know, but its news is getting old: exchanging
        # with it directly either refreshes it or (contact_failed) shows it down.
        ids, n = self._ids, len(self._ids)
        if not n:
            return None
        start, span = self._sweep % n, min(n, _SWEEP)
        self._sweep = start + span
        old_after = self.config.suspect_after * self._scale()
        best: _Record | None = None
        for i in range(span):
            rec = self._nodes[ids[(start + i) % n]]
            if (now - rec.born > old_after
                    and now - rec.probed_at >= self.config.interval
                    and rec.entry.address not in taken
                    and self._state(rec, now, limit) is not NodeState.DOWN
                    and (best is None or rec.born < best.born)):
                best = rec
        if best is None:
            return None
        best.probed_at = now
        return best.entry.address

    # --- what comes back -------------------------------------------------------------

    def receive(self, entries: Iterable[Entry], now: float) -> None:
        """Merge a peer's window: keep, per node, the newest generation's freshest entry."""
        nodes, touched = self._nodes, self._touched
        for e in entries:
            age = e.age
            born = now - age if age > 0.0 else now  # an age < 0 is a sender's bug
            rec = nodes.get(e.node_id)
            if rec is None:
                if e.node_id != self.node_id:  # only this node speaks for itself
                    rec = nodes[e.node_id] = _Record(e, born)
                    self._ids.append(e.node_id)
                    self._by_address[e.address] = e.node_id
                    touched[e.node_id] = rec
                continue
            old = rec.entry
            if e.generation == old.generation:
                if born <= rec.born:
                    continue  # the common case: nothing new
            elif e.generation < old.generation:
                continue  # news from a previous life
            elif born < rec.born:
                self._rescan = True  # a restart born earlier: redo the window in full
            if e.address != old.address:  # restarted elsewhere
                if self._by_address.get(old.address) == e.node_id:
                    del self._by_address[old.address]
                self._by_address[e.address] = e.node_id
            rec.entry = e
            rec.born = born
            touched[e.node_id] = rec

    def add_seed(self, address: str) -> None:
        """A peer known by address only, tried until it answers or is identified."""
        if address != self.address and address not in self._seeds:
            self._seeds.append(address)
            self._unanswered.add(address)

    def contact_succeeded(self, address: str, now: float) -> None:
        """An exchange with ``address`` went through: forget its backoff."""
        self._backoff.pop(address, None)
        self._unanswered.discard(address)

    def contact_failed(self, address: str, now: float) -> None:
        """An exchange with ``address`` failed: its node is down until newer news."""
        delay = self._backoff.get(address, (self.config.retry_min / 2, 0.0))[0]
        delay = min(max(delay * 2, self.config.retry_min), self.config.retry_max)
        self._backoff[address] = (delay, now + delay)
        node_id = self._by_address.get(address)
        if node_id is not None:
            self._nodes[node_id].failed_at = now

    # --- leaving ---------------------------------------------------------------------

    def leave(self, now: float) -> list[Entry]:
        """Mark this node as leaving; returns the window telling peers so."""
        self._leaving = True
        return self.outgoing(now)

    def leave_targets(self, now: float, limit: int = 8) -> list[str]:
        """Up to ``limit`` random live peers to tell that this node leaves."""
        lim = self.down_limit()
        live = [r.entry.address for r in self._nodes.values()
                if self._state(r, now, lim) is not NodeState.DOWN]
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
        return _entry(e.node_id, e.address, e.generation, now - rec.born,
                      e.blocked, e.leaving, e.load)

    def view(self, now: float) -> list[NodeView]:
        """Every known node: self first, then the others by id (n2 before n10)."""
        me = NodeView(self.node_id, self.address, self.state_of(self.node_id, now),
                      self._load, 0.0, self.generation, True)
        limit = self.down_limit()
        others = [
            NodeView(i, r.entry.address, self._state(r, now, limit), r.entry.load,
                     now - r.born, r.entry.generation, False)
            for i, r in sorted(self._nodes.items(), key=lambda kv: _natural(kv[0]))
        ]
        return [me, *others]

