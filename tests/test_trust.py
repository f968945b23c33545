"""Attacks on a daemon and on a user's tools, each refused (real gRPC, one daemon in process)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest
from conftest import BIN, free_port
from test_inprocess import KEY, make_node

from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.auth import body_digest, call_metadata

SET_BLOCKED = "/mosix.v1.Admin/SetBlocked"
EXECUTE = "/mosix.v1.Host/Execute"


def _raw_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A call that sends exactly the bytes given, with exactly the metadata given."""
    return channel.unary_unary(method, request_serializer=lambda raw: raw,
                               response_deserializer=pb.NodeStatus.FromString)


def test_a_token_is_accepted_once_and_only_for_the_request_it_was_signed_for(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [])
        await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.2.1:{port}") as channel:
                call = _raw_call(channel, SET_BLOCKED)
                unblock = pb.SetBlockedRequest(blocked=False).SerializeToString()
                block = pb.SetBlockedRequest(blocked=True).SerializeToString()
                captured = call_metadata(KEY, SET_BLOCKED, request=pb.SetBlockedRequest(blocked=False))
                reply = await call(unblock, metadata=captured, timeout=5)
                assert reply.state == "up"
                # The same token again, even with the same body: a replay.
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(unblock, metadata=captured, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "replayed" in (info.value.details() or "")
                # A fresh token for one body, sent with another: refused, and nothing changed.
                fresh = call_metadata(KEY, SET_BLOCKED, request=pb.SetBlockedRequest(blocked=False))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(block, metadata=fresh, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "not the one its credentials were signed for" in (info.value.details() or "")
                assert node.cluster_view()[0].state.value == "up"
                # A token for a stream of requests does not open a call with one request.
                unbound = call_metadata(KEY, SET_BLOCKED)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(block, metadata=unbound, timeout=5)
                assert "not bound" in (info.value.details() or "")
                assert node.cluster_view()[0].state.value == "up"
                # Garbage signed correctly is a malformed request, not a crash.
                garbage = b"\xff\xff\xff\xff"
                token = call_metadata(KEY, SET_BLOCKED, request=None)
                token = [(k, v.replace(":-:", f":{body_digest(garbage)}:")) for k, v in token]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(garbage, metadata=token, timeout=5)
                # The digest was edited after signing: the HMAC no longer matches.
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await node.stop(grace=0.1)

    asyncio.run(scenario())


def test_malformed_bytes_under_valid_credentials_are_invalid_argument(tmp_path: Path) -> None:
    class Garbage:
        def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
            return b"\xff\xff\xff\xff"

    async def scenario() -> None:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [])
        await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.2.1:{port}") as channel:
                metadata = call_metadata(KEY, SET_BLOCKED, request=Garbage())
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _raw_call(channel, SET_BLOCKED)(Garbage().SerializeToString(), metadata=metadata, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "malformed request" in (info.value.details() or "")
        finally:
            await node.stop(grace=0.1)

    asyncio.run(scenario())


def test_a_task_id_that_is_a_path_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "precious").write_text("keep me")

    async def scenario() -> list[pb.HostEvent]:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [])
        await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.2.1:{port}") as channel:
                stub = channel.stream_stream(EXECUTE, request_serializer=pb.HomeMessage.SerializeToString,
                                             response_deserializer=pb.HostEvent.FromString)
                # state_dir is tmp_path/p1: the scratch root tmp_path/p1/tasks, two levels down.
                spec = pb.TaskSpec(task_id="../../victim", user="root", uid=os.getuid(),
                                   executable=sys.executable, argv=["python", "-c", "pass"])
                call = stub(iter([pb.HomeMessage(start=spec)]), metadata=call_metadata(KEY, EXECUTE, "p9"),
                            timeout=10)
                return [event async for event in call]
        finally:
            await node.stop(grace=0.1)

    events = asyncio.run(scenario())
    assert [e.WhichOneof("kind") for e in events] == ["refused"]
    assert "malformed task: the task id '../../victim'" in events[0].refused.reason
    assert not events[0].refused.retry
    assert (victim / "precious").read_text() == "keep me"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700


def _tool(args: list[str], runtime: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MOSIX_NODE", "XDG_RUNTIME_DIR")}
    env["MOSIX_RUNTIME_DIR"] = str(runtime)
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("plant", ["another owner", "group-writable", "symlink"])
def test_a_planted_runtime_directory_is_refused_by_every_tool(tmp_path: Path, plant: str) -> None:
    runtime = tmp_path / "mosix-runtime"
    if plant == "another owner":
        if os.geteuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        runtime.mkdir(mode=0o700)
        os.chown(runtime, 54321, 54321)
    elif plant == "group-writable":
        runtime.mkdir()
        os.chmod(runtime, 0o770)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        runtime.symlink_to(tmp_path / "elsewhere")
    # What a squatter leaves there: a registry naming a live pid and a socket of its own.
    if plant != "another owner":
        (runtime / "local.json").write_text(
            '{"pid": %d, "key_file": "/nonexistent", "nodes": [{"id": "n1", "address": "127.0.1.1:1",'
            ' "socket": "%s", "session": "%s"}]}' % (os.getpid(), runtime / "x.sock", runtime / "mosrun.sock"))
    mosrun = _tool(["mosrun", "python", "-c", "print('ran')"], runtime)
    mosctl = _tool(["mosctl", "status"], runtime)
    local = _tool(["mosixd", "--local", "2", "--port", "0"], runtime)
    for result, code in ((mosrun, 125), (mosctl, 3), (local, 1)):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code, result.stderr
        assert len(lines) == 1 and "refusing runtime directory" in lines[0], result.stderr
        assert "ran" not in result.stdout


def test_idle_sessions_are_capped_per_user_and_closed_after_the_launch_timeout(tmp_path: Path) -> None:
    from mosrun.runtime import frames

    async def scenario() -> None:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [], max_sessions_per_user=3, launch_timeout=1.0)
        await node.start()
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(3):  # idle sessions: connected, never launching
                reader, writer = await asyncio.open_unix_connection(str(node.session_socket))
                opened.append((reader, writer))
                frame = await asyncio.wait_for(frames.read_frame(reader), 5)
                assert frame is not None and frame[0]["t"] == "hello"
            reader, writer = await asyncio.open_unix_connection(str(node.session_socket))
            frame = await asyncio.wait_for(frames.read_frame(reader), 5)
            assert frame is not None and frame[0]["t"] == "error"
            assert "the limit per user (limits.sessions_per_user)" in frame[0]["message"]
            writer.close()
            # The idle ones are told why and closed once the launch timeout passes ...
            for reader, _ in opened:
                frame = await asyncio.wait_for(frames.read_frame(reader), 5)
                assert frame is not None and "no launch request within 1 s" in frame[0]["message"]
                assert await asyncio.wait_for(reader.read(), 5) == b""
            # ... which frees their slots.
            reader, writer = await asyncio.open_unix_connection(str(node.session_socket))
            frame = await asyncio.wait_for(frames.read_frame(reader), 5)
            assert frame is not None and frame[0]["t"] == "hello"
            writer.close()
        finally:
            for _, writer in opened:
                writer.close()
            await node.stop(grace=0.1)

    asyncio.run(scenario())


@pytest.mark.parametrize("rules, spec, said", [
    ({}, {"user": "root", "home": "p9"}, "tasks of root (uid 0) are not run here (security.run_as_root)"),
    ({"run_as_root": True, "deny_users": "nobody,daemon"}, {"user": "nobody", "home": "p9"},
     "tasks of nobody are not run here (security.deny_users)"),
    ({"run_as_root": True, "homes": "p7,p8"}, {"user": "root", "home": "p9"},
     "node p9 may not start tasks here (security.homes)"),
])
def test_a_host_runs_only_the_users_and_homes_its_config_allows(tmp_path: Path, rules: dict[str, object],
                                                                  spec: dict[str, str], said: str) -> None:
    async def scenario() -> list[pb.HostEvent]:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [], **rules)
        await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.2.1:{port}") as channel:
                stub = channel.stream_stream(EXECUTE, request_serializer=pb.HomeMessage.SerializeToString,
                                             response_deserializer=pb.HostEvent.FromString)
                task = pb.TaskSpec(task_id="p9.1.1", uid=0, executable=sys.executable, argv=["python", "-c", "pass"],
                                   cwd=str(tmp_path), streams_to="127.0.0.1:1", **spec)
                call = stub(iter([pb.HomeMessage(start=task)]), metadata=call_metadata(KEY, EXECUTE, "p9"), timeout=10)
                return [event async for event in call]
        finally:
            await node.stop(grace=0.1)

    if os.geteuid() != 0:
        pytest.skip("a daemon runs other users' tasks only as root")
    events = asyncio.run(scenario())
    assert [e.WhichOneof("kind") for e in events] == ["refused"]
    assert events[0].refused.reason == f"p1: {said}"
    assert not (tmp_path / "p1" / "tasks" / "p9.1.1").exists()


def test_one_address_cannot_take_every_greeting_slot_of_a_mosrun() -> None:
    import selectors

    from mosrun.commands.dataplane import MAX_GREETINGS_PER_PEER, DataPlane

    sel = selectors.DefaultSelector()
    plane = DataPlane(sel, "127.0.0.1", "n1.1.1")
    clients: list[socket.socket] = []

    def connect_from(ip: str) -> None:
        sock = socket.socket()
        sock.bind((ip, 0))
        sock.connect(("127.0.0.1", plane.port))
        clients.append(sock)

    def pump() -> None:
        for _ in range(5):  # bounded: the accepts are all ready at once
            for key, events in sel.select(timeout=0.2):
                key.data(events)

    try:
        for _ in range(MAX_GREETINGS_PER_PEER + 4):  # a hog, idle after connecting
            connect_from("127.0.0.2")
        pump()
        assert sum(1 for g in plane.greetings.values() if g.ip == "127.0.0.2") == MAX_GREETINGS_PER_PEER
        connect_from("127.0.0.3")  # the task's node, from its own address: still taken in
        pump()
        assert [g.ip for g in plane.greetings.values()].count("127.0.0.3") == 1
    finally:
        for sock in clients:
            sock.close()
        plane.close()
        sel.close()


def test_a_frame_over_its_sockets_payload_limit_is_refused_before_it_is_read() -> None:
    from mosrun.runtime import frames

    async def read(data: bytes, limit: int) -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await frames.read_frame(reader, limit)

    # Only the prefix arrives: a reader that waited for the 16 MiB would report a cut frame.
    big = frames.PREFIX.pack(2, 16 << 20) + b"{}"
    with pytest.raises(frames.ProtocolError, match="payload of 16777216 bytes is over the limit of 1048576"):
        asyncio.run(read(big, 1 << 20))
    assert asyncio.run(read(frames.encode({"t": "stdin"}, b"x" * 10), 1 << 20)) == ({"t": "stdin"}, b"x" * 10)
    with pytest.raises(frames.ProtocolError, match="over the limit of 0"):
        asyncio.run(read(frames.encode({"t": "call"}, b"x"), 0))  # the tools socket: headers only


def test_stdin_sent_too_far_ahead_of_the_task_is_a_protocol_error() -> None:
    from mosixd.core.stdinlog import StdinOverrun, StdinWindow

    window = StdinWindow(limit=100)
    window.sent(60)
    window.acked(50)
    window.sent(90)  # 100 ahead: at the limit, allowed
    with pytest.raises(StdinOverrun, match="101 bytes of stdin sent ahead of the task, over the limit of 100"):
        window.sent(1)
    window.acked(1000)
    assert window.ahead == 0
