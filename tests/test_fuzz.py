"""Hypothesis fuzz of a live daemon: every RPC and both Unix-socket framings.

One daemon runs for the module on an event loop of its own thread. Hypothesis sends it bytes
and messages, correctly signed (so they pass authentication and reach the parsers and the
cores), then garbage on the tools socket and on mosrun's. Whatever it sends, the daemon must
answer with a status a client can act on (never UNKNOWN or INTERNAL, which mean an unhandled
exception), close a connection it cannot use within its time limits, and still serve
afterwards with its memory bounded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import grpc
import psutil
import pytest
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_inprocess import KEY, make_node

from mosixd.daemon.node import NodeDaemon
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.auth import body_digest, sign
from mosrun.runtime import frames

UNARY = {
    "/mosix.v1.Gossip/Exchange": pb.GossipMessage,
    "/mosix.v1.Gossip/Probe": pb.ProbeRequest,
    "/mosix.v1.Admin/ClusterStatus": pb.ClusterStatusRequest,
    "/mosix.v1.Admin/SetBlocked": pb.SetBlockedRequest,
    "/mosix.v1.Admin/ListTasks": pb.ListTasksRequest,
    "/mosix.v1.Admin/Migrate": pb.MigrateRequest,
}
# What a daemon may answer a bad request with; UNKNOWN and INTERNAL would be its own crash.
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


class LiveNode:
    """A daemon on a loop of its own thread, for blocking tests to poke."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port(["127.0.2.1"])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = self._run(self._make(tmp))
        self.channel = grpc.insecure_channel(f"127.0.2.1:{self.port}")

    async def _make(self, tmp: Path) -> NodeDaemon:
        node = make_node(tmp, 1, self.port, [], gossip_interval=0.2, launch_timeout=1.0)
        await node.start()
        return node

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, method: str, raw: bytes) -> grpc.StatusCode:
        """Send ``raw`` as the request of ``method``, signed for exactly those bytes."""
        invoke = self.channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        metadata = [("x-mosix-auth", sign(KEY, method, body_digest(raw))), ("x-mosix-node", "fuzz")]
        try:
            invoke(raw, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def status(self) -> dict[str, int]:
        """The daemon answers, and says what its tables hold."""
        reply = pb.ClusterStatusReply.FromString(self.channel.unary_unary(
            "/mosix.v1.Admin/ClusterStatus", request_serializer=lambda b: b, response_deserializer=lambda b: b)(
                b"", metadata=[("x-mosix-auth", sign(KEY, "/mosix.v1.Admin/ClusterStatus", body_digest(b"")))],
                timeout=10))
        return dict(reply.tables)

    def stop(self) -> None:
        self.channel.close()
        self._run(self.node.stop(grace=0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path_factory.mktemp("fuzz"))
    try:
        yield node
    finally:
        node.stop()


@FUZZ
@given(method=st.sampled_from(sorted(UNARY)), raw=st.binary(max_size=2048))
def test_random_bytes_on_every_rpc_get_a_status_a_client_can_act_on(live: LiveNode, method: str, raw: bytes) -> None:
    assert live.call(method, raw) in ACCEPTABLE


def _message(kind: type) -> st.SearchStrategy[bytes]:
    """Well-formed messages of ``kind`` with hypothesis-chosen field values (strings, ids,
    addresses and numbers that may be empty, huge, negative or absurd)."""
    text = st.text(max_size=80)
    if kind is pb.GossipMessage:
        entry = st.builds(pb.GossipEntry, node_id=text, address=text, generation=st.integers(0, 2**63 - 1),
                          incarnation=st.integers(0, 2**63 - 1), age=st.floats(allow_nan=True),
                          blocked=st.booleans(), leaving=st.booleans())
        rumor = st.builds(pb.MemberRumor, node_id=text, address=text, generation=st.integers(0, 2**63 - 1),
                          incarnation=st.integers(0, 2**63 - 1), status=st.integers(0, 9))
        made = st.builds(pb.GossipMessage, sender_id=text, sender_address=text,
                         entries=st.lists(entry, max_size=30), rumors=st.lists(rumor, max_size=10),
                         rumors_only=st.booleans())
    elif kind is pb.ProbeRequest:
        made = st.builds(pb.ProbeRequest, target=text)
    elif kind is pb.MigrateRequest:
        made = st.builds(pb.MigrateRequest, task_id=text, target=text, uid=st.integers(0, 2**32 - 1))
    else:
        made = st.builds(kind)
    return made.map(lambda m: m.SerializeToString())


@FUZZ
@given(data=st.data(), method=st.sampled_from(sorted(UNARY)))
def test_well_formed_messages_with_absurd_fields_are_refused_or_served(live: LiveNode, data: st.DataObject,
                                                                      method: str) -> None:
    assert live.call(method, data.draw(_message(UNARY[method]))) in ACCEPTABLE
    # Nothing absurd was taken into the table: every member has a usable id.
    assert all(v.id and "/" not in v.id for v in live.node.cluster_view())


def _framing() -> st.SearchStrategy[bytes]:
    """Bytes on a framed Unix socket: garbage, lies about sizes, bad JSON, wrong types, and
    valid frames out of order."""
    prefix = st.builds(lambda h, p: struct.pack("!II", h, p), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    header = st.dictionaries(st.sampled_from(["t", "op", "args", "argv", "env", "cwd"]),
                             st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.text(max_size=5))),
                             max_size=5)
    frame = header.map(lambda h: frames.encode(h) if frames.PREFIX.size else b"")
    return st.one_of(st.binary(max_size=512), prefix, st.lists(frame, max_size=4).map(b"".join),
                     st.tuples(prefix, st.binary(max_size=64)).map(lambda t: t[0] + t[1]))


def _poke(path: str, raw: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)  # the daemon closes first: its launch timeout is 1 s here
        sock.connect(path)
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            for _ in range(10_000):  # until the daemon closes its end
                if not sock.recv(1 << 16):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # it closed on us mid-send: also an answer


@FUZZ
@given(raw=_framing(), which=st.sampled_from(["tools", "mosrun"]))
def test_garbage_on_the_unix_sockets_costs_one_connection(live: LiveNode, raw: bytes, which: str) -> None:
    path = live.node.config.socket if which == "tools" else live.node.session_socket
    _poke(str(path), raw)


def test_after_the_fuzz_the_daemon_serves_with_bounded_memory_and_empty_tables(live: LiveNode) -> None:
    rss = psutil.Process().memory_info().rss
    tables = live.status()
    assert tables["sessions"] == 0 and tables["task_records"] == 0 and tables["tool_connections"] == 0
    # The same process ran the tests: its whole memory bounds the daemon's.
    assert rss < 1 << 30, f"{rss >> 20} MB after the fuzz"
    assert live.node.view.members() <= live.node.view.config.max_members
