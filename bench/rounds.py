"""A round simulator of the real gossip core: ``GossipView`` objects exchanging in rounds.

Every node runs the real ``mosixd.core.gossip.GossipView`` on its own clock (a random
offset, so only relative ages can make the figures come out right). A round is strict:
every message of the round (windows, rumors, targets) is built from the state at its
start, and what arrives is taken in at its end, so news moves at most one hop a round
(the real daemons, whose exchanges overlap, are faster, never slower). In a round each
live node

- exchanges push-pull with the targets ``choose_targets`` names; a failed exchange goes
  through ``contact_failed``, the helpers it names relay a probe (SWIM's ping-req), and
  ``probe_result`` says whether any got through;
- pushes its news to the peers ``push_targets`` names, and hears theirs back.

Nodes can be killed, split into groups that cannot reach each other, and every message
(each leg of a relayed probe too) is lost with probability ``loss``. ``meter`` is told of
every message sent, for byte counts.

Used by ``bench.gossip`` and by the property tests of the core.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mosixd.core.gossip import Entry, GossipConfig, GossipView, NodeState
from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor

#: meter(sender, entries, rumors): one message sent (``entries`` None for a push).
Meter = Callable[[GossipView, "list[Entry] | None", "list[Rumor]"], None]


def address_of(name: str) -> str:
    """A distinct address per node name (n1 -> 10.0.0.1:7000, n300 -> 10.0.1.45:7000)."""
    i = int(name[1:]) if name[1:].isdigit() else abs(hash(name)) % 60000
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250}:7000"


@dataclass
class _Delivery:
    receiver: str
    entries: list[Entry]
    rumors: list[Rumor]


class RoundSim:
    """Real GossipViews in strict rounds, with kills, partitions and message loss."""

    def __init__(self, config: GossipConfig = GossipConfig(), seed: int = 0, loss: float = 0.0,
                 meter: Meter | None = None,
                 load: Callable[[str, random.Random], LoadVector] | None = None) -> None:
        self.config = config
        self.seed = seed
        self.loss = loss
        self.meter = meter
        self.rng = random.Random(seed)
        self._load = load or (lambda name, rng: LoadVector(cpus=2, mem_total=1 << 30,
                                                           python="3.11.7"))
        self.t = 0.0  # the simulation's "true" time; no node sees it
        self.round_no = 0
        self.nodes: dict[str, GossipView] = {}
        self.offset: dict[str, float] = {}
        self.alive: set[str] = set()
        self.group: dict[str, int] = {}  # nodes in different groups cannot reach each other
        self.by_address: dict[str, str] = {}
        self.windows: dict[str, list[Entry]] = {}  # the windows of the last round
        self.exchanges: list[tuple[str, str]] = []  # (node, target address) of the last round

    # --- the cluster -------------------------------------------------------------------

    def now(self, name: str) -> float:
        return self.t + self.offset[name]

    def start(self, name: str, seeds: Iterable[str] = (), generation: int = 1) -> GossipView:
        """Start (or restart) a node; a restart gets a new clock, as after a reboot."""
        self.offset[name] = self.rng.uniform(-1e4, 1e4)
        view = GossipView(name, address_of(name), self.config, self.now(name),
                          generation=generation, load=self._load(name, self.rng),
                          rng=random.Random(f"{self.seed}-{name}-{generation}"))
        for s in seeds:
            view.add_seed(address_of(s))
        self.nodes[name] = view
        self.by_address[view.address] = name
        self.alive.add(name)
        return view

    @classmethod
    def formed(cls, n: int, config: GossipConfig = GossipConfig(), seed: int = 0,
               loss: float = 0.0, meter: Meter | None = None,
               load: Callable[[str, random.Random], LoadVector] | None = None) -> RoundSim:
        """n nodes that have each heard every other node's entry once, news told."""
        sim = cls(config, seed, loss, meter, load)
        names = [f"n{i}" for i in range(1, n + 1)]
        for name in names:
            sim.start(name)
        own = [sim.nodes[name].outgoing(sim.now(name))[0] for name in names]
        for name in names:
            view = sim.nodes[name]
            view.receive(own, sim.now(name))
            while view.rumors:  # the joins are known already: nothing left to tell
                view.rumors.take(len(view.rumors), 1)
        return sim

    def kill(self, name: str) -> None:
        """The node stops answering and says nothing (kill -9)."""
        self.alive.discard(name)

    def split(self, *groups: Iterable[str]) -> None:
        """Partition: nodes of different groups cannot reach each other."""
        self.group = {name: k for k, names in enumerate(groups) for name in names}

    def heal(self) -> None:
        self.group = {}

    def reachable(self, a: str, b: str) -> bool:
        return b in self.alive and self.group.get(a, -1) == self.group.get(b, -1)

    def _arrives(self, a: str, b: str) -> bool:
        return self.reachable(a, b) and (self.loss <= 0.0 or self.rng.random() >= self.loss)

    # --- a round -----------------------------------------------------------------------

    def step(self) -> None:
        """One strict round (see the module docstring)."""
        self.round_no += 1
        nodes, now = self.nodes, self.now
        live = [n for n in nodes if n in self.alive]
        self.windows = {}  # free the last round's entries first: big windows are N^2 objects
        windows = self.windows = {n: nodes[n].outgoing(now(n)) for n in live}
        exchanges = self.exchanges = [(n, a) for n in live for a in nodes[n].choose_targets(now(n))]
        pushes = [(n, a) for n in live for a in nodes[n].push_targets(now(n))]
        deliveries: list[_Delivery] = []
        outcomes: list[tuple[str, str, bool | None]] = []  # (node, target, reached) ...
        for name, target in exchanges:
            outcomes.append((name, target, self._exchange(name, target, windows, deliveries)))
        for name, target in pushes:
            self._push(name, target, deliveries)
        for d in deliveries:
            view = nodes[d.receiver]
            view.receive(d.entries, now(d.receiver))
            view.hear(d.rumors, now(d.receiver))
        for name, target, reached in outcomes:
            view = nodes[name]
            if reached:
                view.contact_succeeded(target, now(name))
                continue
            helpers = view.contact_failed(target, now(name))
            if helpers:
                got = any([self._relay(name, h, target) for h in helpers])
                view.probe_result(target, got, now(name))
        self.t += self.config.interval

    def _send(self, sender: str, entries: list[Entry] | None, rumors: list[Rumor]) -> None:
        if self.meter is not None:
            self.meter(self.nodes[sender], entries, rumors)

    def _exchange(self, name: str, address: str, windows: dict[str, list[Entry]],
                  deliveries: list[_Delivery]) -> bool:
        peer = self.by_address.get(address)
        view = self.nodes[name]
        rumors = view.rumors_for(address, self.now(name))
        self._send(name, windows[name], rumors)
        if peer is None or not self._arrives(name, peer):
            return False
        other = self.nodes[peer]
        deliveries.append(_Delivery(peer, windows[name], rumors))
        reply = other.rumors_for(view.address, self.now(peer))
        self._send(peer, windows[peer], reply)
        if not self._arrives(peer, name):
            return False
        deliveries.append(_Delivery(name, windows[peer], reply))
        return True

    def _push(self, name: str, address: str, deliveries: list[_Delivery]) -> None:
        peer = self.by_address.get(address)
        view = self.nodes[name]
        rumors = view.rumors_for(address, self.now(name))
        self._send(name, None, rumors)
        if peer is None or not self._arrives(name, peer):
            return
        deliveries.append(_Delivery(peer, [], rumors))
        reply = self.nodes[peer].rumors_for(view.address, self.now(peer))
        self._send(peer, None, reply)
        if self._arrives(peer, name):
            deliveries.append(_Delivery(name, [], reply))

    def _relay(self, name: str, helper_address: str, target_address: str) -> bool:
        # A probe relayed by the helper (SWIM's ping-req): four legs, each of which can be
        # lost, carrying news only. The target hears the asking node's news, so an accused
        # target refutes at once, and its answer comes back with the refutation.
        helper = self.by_address.get(helper_address)
        target = self.by_address.get(target_address)
        if helper is None or target is None:
            return False
        view, now = self.nodes[name], self.now
        rumors = view.rumors_for(target_address, now(name))  # news only, no window
        self._send(name, None, rumors)
        if not self._arrives(name, helper):
            return False
        self._send(helper, None, rumors)
        if not self._arrives(helper, target):
            return False
        other = self.nodes[target]
        other.hear(rumors, now(target))
        reply = other.rumors_for(view.address, now(target))
        self._send(target, None, reply)
        if not (self._arrives(target, helper) and self._arrives(helper, name)):
            return False
        self._send(helper, None, reply)
        view.hear(reply, now(name))
        return True

    # --- what the nodes see ------------------------------------------------------------

    def state(self, observer: str, node: str) -> NodeState | None:
        return self.nodes[observer].state_of(node, self.now(observer))

    def states(self, observer: str) -> dict[str, NodeState]:
        return {v.id: v.state for v in self.nodes[observer].view(self.now(observer))}

    def seeing(self, node: str, states: Iterable[NodeState]) -> int:
        """How many live nodes (``node`` aside) see ``node`` in one of ``states``."""
        wanted = set(states)
        return sum(1 for o in self.alive if o != node and self.state(o, node) in wanted)
