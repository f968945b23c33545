"""Conversions between the pure core types and the protobuf wire messages."""

from __future__ import annotations

import math
from typing import Any, Iterable

from mosixd.core.gossip import Entry, NodeState, NodeView
from mosixd.core.loadvector import LoadVector
from mosixd.core.rumors import Rumor, Status
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.names import MAX_ADDRESS_LENGTH, node_id_problem


class MalformedMessage(ValueError):
    """A message from the wire does not make sense (bad number, empty id, ...)."""


def load_to_pb(load: LoadVector) -> pb.LoadVector:
    return pb.LoadVector(
        load=load.load, cpus=load.cpus, speed=load.speed, mem_total=load.mem_total,
        mem_free=load.mem_free, local_tasks=load.local_tasks, guest_tasks=load.guest_tasks,
        python=load.python,
    )


def load_from_pb(msg: pb.LoadVector) -> LoadVector:
    if not all(math.isfinite(x) and x >= 0 for x in (msg.load, msg.speed)):
        raise MalformedMessage(f"load vector with load={msg.load} speed={msg.speed}")
    return LoadVector(
        load=msg.load, cpus=msg.cpus, speed=msg.speed, mem_total=msg.mem_total,
        mem_free=msg.mem_free, local_tasks=msg.local_tasks, guest_tasks=msg.guest_tasks,
        python=msg.python,
    )


def entry_to_pb(entry: Entry) -> pb.GossipEntry:
    return pb.GossipEntry(
        node_id=entry.node_id, address=entry.address, generation=entry.generation,
        incarnation=entry.incarnation, age=entry.age, blocked=entry.blocked,
        leaving=entry.leaving, load=load_to_pb(entry.load),
    )


def _check_member(node_id: str, address: str, what: str) -> None:
    if problem := node_id_problem(node_id):
        raise MalformedMessage(f"{what}: {problem}")
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise MalformedMessage(f"{what} for {node_id} without a usable address")


def entry_from_pb(msg: pb.GossipEntry) -> Entry:
    _check_member(msg.node_id, msg.address, "gossip entry")
    if not (math.isfinite(msg.age) and msg.age >= 0):
        raise MalformedMessage(f"gossip entry for {msg.node_id} with age {msg.age}")
    return Entry(
        node_id=msg.node_id, address=msg.address, generation=msg.generation,
        incarnation=msg.incarnation, age=msg.age, blocked=msg.blocked, leaving=msg.leaving,
        load=load_from_pb(msg.load),
    )


def rumor_to_pb(rumor: Rumor) -> pb.MemberRumor:
    return pb.MemberRumor(node_id=rumor.node_id, address=rumor.address,
                          generation=rumor.generation, incarnation=rumor.incarnation,
                          status=int(rumor.status))  # type: ignore[arg-type]


def rumor_from_pb(msg: pb.MemberRumor) -> Rumor:
    _check_member(msg.node_id, msg.address, "membership rumor")
    try:
        status = Status(msg.status)
    except ValueError:
        raise MalformedMessage(f"membership rumor for {msg.node_id} with status {msg.status}") from None
    return Rumor(msg.node_id, msg.address, msg.generation, msg.incarnation, status)


def gossip_message(sender_id: str, sender_address: str, entries: Iterable[Entry],
                   rumors: Iterable[Rumor] = (), *, rumors_only: bool = False) -> pb.GossipMessage:
    return pb.GossipMessage(
        sender_id=sender_id, sender_address=sender_address,
        entries=[entry_to_pb(e) for e in entries], rumors=[rumor_to_pb(r) for r in rumors],
        rumors_only=rumors_only,
    )


def entries_from_message(msg: pb.GossipMessage) -> list[Entry]:
    return [entry_from_pb(e) for e in msg.entries]


def rumors_from_message(msg: pb.GossipMessage) -> list[Rumor]:
    return [rumor_from_pb(r) for r in msg.rumors]


def node_to_pb(view: NodeView) -> pb.NodeStatus:
    return pb.NodeStatus(
        id=view.id, address=view.address, state=view.state.value, load=load_to_pb(view.load),
        age=view.age, self=view.is_self, generation=view.generation,
    )


def node_status_to_dict(msg: pb.NodeStatus) -> dict[str, Any]:
    """The JSON shape of a node shared by mosmon --json and mosctl status --json."""
    load = msg.load
    return {
        "id": msg.id,
        "address": msg.address,
        "state": msg.state if msg.state in {s.value for s in NodeState} else "down",
        "load": round(load.load, 4),
        "cpus": load.cpus,
        "speed": round(load.speed, 4),
        "mem_total": load.mem_total,
        "mem_free": load.mem_free,
        "tasks": load.local_tasks + load.guest_tasks,
        "local_tasks": load.local_tasks,
        "guest_tasks": load.guest_tasks,
        "age": round(msg.age, 3),
        "generation": msg.generation,
        "self": msg.self,
        "python": load.python,
    }


def task_info_to_dict(t: pb.TaskInfo) -> dict[str, Any]:
    """The JSON shape of a task shared by mosps --json and the tools' socket."""
    return {"id": t.id, "user": t.user, "home": t.home, "where": t.where, "state": t.state,
            "started": round(t.started, 3), "cpu": round(t.cpu, 3), "rss": t.rss, "command": t.command,
            "pid": t.pid, **({"queue": t.queue} if t.queue else {})}


def migrate_reply_to_dict(reply: pb.MigrateReply) -> dict[str, Any]:
    """The JSON shape of a move's outcome (migrate --json)."""
    return {"ok": reply.ok, "message": reply.message, "node": reply.node,
            "freeze_seconds": round(reply.freeze_seconds, 4), "state_bytes": reply.state_bytes,
            "transfer_seconds": round(reply.transfer_seconds, 4), "precopy_bytes": reply.precopy_bytes,
            "precopy_rounds": reply.precopy_rounds}
