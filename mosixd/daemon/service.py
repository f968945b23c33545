"""Thin gRPC servicers: decode the request, call the node's core, encode the answer."""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Protocol

import grpc
import grpc.aio

from mosixd.core.gossip import NodeView
from mosixd.daemon.gossiper import ProbeRefused
from mosixd.wire import codec
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire import mosix_pb2_grpc as rpc
from mosixd.wire.tls import peer_node


class ServedNode(Protocol):
    """What the servicers ask of their node (the daemon is one; a test may build another)."""

    node_id: str

    def exchange(self, request: pb.GossipMessage) -> pb.GossipMessage: ...

    async def probe(self, request: pb.ProbeRequest, time_left: float | None) -> pb.ProbeReply: ...

    def cluster_view(self) -> list[NodeView]: ...

    def set_blocked(self, blocked: bool) -> NodeView: ...

    def task_list(self) -> list[pb.TaskInfo]: ...

    def tables(self) -> dict[str, int]: ...

    async def migrate(self, request: pb.MigrateRequest) -> pb.MigrateReply: ...

    async def host_task(self, requests: AsyncIterator[pb.HomeMessage],
                        send: Callable[[pb.HostEvent], Awaitable[None]], caller: str | None) -> None: ...


async def _speaks_for(context: grpc.aio.ServicerContext, sender_id: str) -> None:
    """Under TLS, a node speaks only for itself: the id it sends must be its certificate's."""
    caller = peer_node(context)
    if caller is not None and caller != sender_id:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"mosix: the certificate of node {caller} cannot speak for {sender_id[:64]!r}")


class GossipService(rpc.GossipServicer):
    """Push-pull exchange of gossip windows and news between daemons, and relayed probes."""

    def __init__(self, node: ServedNode) -> None:
        self._node = node

    async def Exchange(self, request: pb.GossipMessage, context: grpc.aio.ServicerContext) -> pb.GossipMessage:
        await _speaks_for(context, request.sender_id)
        try:
            return self._node.exchange(request)
        except codec.MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"mosix: malformed gossip: {exc}")
            raise  # abort raises; this keeps type checkers sure of it

    async def Probe(self, request: pb.ProbeRequest, context: grpc.aio.ServicerContext) -> pb.ProbeReply:
        try:
            return await self._node.probe(request, context.time_remaining())
        except ProbeRefused as exc:
            await context.abort(exc.code, str(exc))
            raise


class AdminService(rpc.AdminServicer):
    """What mosmon and mosctl ask a daemon."""

    def __init__(self, node: ServedNode) -> None:
        self._node = node

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context: grpc.aio.ServicerContext) -> pb.ClusterStatusReply:
        return pb.ClusterStatusReply(
            node_id=self._node.node_id, nodes=[codec.node_to_pb(v) for v in self._node.cluster_view()],
            tables=self._node.tables())

    async def SetBlocked(self, request: pb.SetBlockedRequest, context: grpc.aio.ServicerContext) -> pb.NodeStatus:
        return codec.node_to_pb(self._node.set_blocked(request.blocked))

    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.TaskList:
        return pb.TaskList(node_id=self._node.node_id, tasks=self._node.task_list())

    async def Migrate(self, request: pb.MigrateRequest, context: grpc.aio.ServicerContext) -> pb.MigrateReply:
        return await self._node.migrate(request)


class HostService(rpc.HostServicer):
    """Runs tasks for their home nodes."""

    def __init__(self, node: ServedNode) -> None:
        self._node = node

    async def Execute(self, request_iterator: AsyncIterator[pb.HomeMessage],
                      context: grpc.aio.ServicerContext) -> None:
        await self._node.host_task(request_iterator, context.write, peer_node(context))


def add_services(server: grpc.aio.Server, node: ServedNode) -> None:
    """Register every mosix service of ``node`` on ``server``."""
    rpc.add_GossipServicer_to_server(GossipService(node), server)
    rpc.add_AdminServicer_to_server(AdminService(node), server)
    rpc.add_HostServicer_to_server(HostService(node), server)
