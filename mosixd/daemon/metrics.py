"""Prometheus metrics of a node, on an opt-in port (``metrics.listen``).

Read at each scrape from the node's own tables, so nothing is counted twice and nothing
grows. Readable without credentials, they tell counts only: no user, task or command name.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

from mosixd.core.gossip import NodeState
from mosrun.runtime import netaddr

PREFIX = "mosix"


class NodeCollector:
    """A prometheus_client collector over one ``NodeDaemon``."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self._node
        own = node.cluster_view()[0].load

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield gauge("load", "this node's load (standard CPUs of demand per CPU)", own.load)
        yield gauge("cpus", "CPUs this node offers", own.cpus)
        yield gauge("speed", "this node's CPU speed, relative to a standard CPU", own.speed)
        yield gauge("memory_free_bytes", "free memory this node reports", own.mem_free)
        yield gauge("memory_total_bytes", "memory this node reports", own.mem_total)
        members = GaugeMetricFamily(f"{PREFIX}_members", "nodes of the cluster as this node sees them, by state",
                                    labels=["state"])
        states = collections.Counter(v.state.value for v in node.cluster_view())
        for state in NodeState:
            members.add_metric([state.value], states.get(state.value, 0))
        yield members
        hosted = GaugeMetricFamily(f"{PREFIX}_hosted_tasks", "tasks running on this node, by where their home is",
                                   labels=["home"])
        local, guests = node.tasks.counts()
        hosted.add_metric(["here"], local)
        hosted.add_metric(["elsewhere"], guests)
        yield hosted
        homed = GaugeMetricFamily(f"{PREFIX}_home_tasks", "tasks whose home is this node, by state", labels=["state"])
        by_state = collections.Counter(r.state for r in node.home.records.values())
        for state in ("starting", "queued", "running"):
            homed.add_metric([state], by_state.get(state, 0))
        yield homed
        yield gauge("sessions", "mosrun sessions open at this home", node.home.sessions())
        moves = CounterMetricFamily(f"{PREFIX}_moves", "moves this home drove, by outcome", labels=["outcome"])
        moves.add_metric(["moved"], node.home.mover.moves[True])
        moves.add_metric(["failed"], node.home.mover.moves[False])
        yield moves
        yield CounterMetricFamily(f"{PREFIX}_move_freeze_seconds", "time tasks stood still in moves that succeeded",
                                  value=node.home.mover.freeze_seconds)
        refusals = CounterMetricFamily(f"{PREFIX}_refusals", "requests refused, by reason", labels=["reason"])
        for reason, count in sorted(node.refusals().items()):
            refusals.add_metric([reason], count)
        yield refusals


def serve(node: Any, listen: str) -> Any:
    """Serve ``node``'s metrics over HTTP at ``listen`` (HOST:PORT), in a thread of its own;
    returns the server (``shutdown()`` stops it). OSError if the address cannot be bound."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))  # type: ignore[arg-type]
    host, port = netaddr.split(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
