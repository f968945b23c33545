"""Prometheus metrics on an opt-in port: counts a monitor needs, and no user's data."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

import grpc
import grpc.aio
from conftest import free_port
from test_inprocess import KEY, make_node

from mosixd.home.livetask import TaskRecord
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.auth import call_metadata


def test_metrics_count_members_tasks_and_refusals_and_name_no_user(tmp_path: Path) -> None:
    async def scenario() -> str:
        port, metrics_port = free_port(["127.0.2.1"]), free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [], demand=1.0, metrics_listen=f"127.0.2.1:{metrics_port}")
        await node.start()
        try:
            # A queued task of a user, as the home holds it.
            node.home.records["p1.1.1"] = TaskRecord(id="p1.1.1", user="secretuser", command="secret-command --x",
                                                     started=0.0, state="queued")
            # One refused task stream (a task id that is a path) and one refused call (no key).
            async with grpc.aio.insecure_channel(f"127.0.2.1:{port}") as channel:
                execute = channel.stream_stream("/mosix.v1.Host/Execute",
                                                request_serializer=pb.HomeMessage.SerializeToString,
                                                response_deserializer=pb.HostEvent.FromString)
                spec = pb.TaskSpec(task_id="../x", user="root", uid=os.getuid(), executable=sys.executable)
                call = execute(iter([pb.HomeMessage(start=spec)]),
                               metadata=call_metadata(KEY, "/mosix.v1.Host/Execute", "p9"), timeout=10)
                assert [e.WhichOneof("kind") async for e in call] == ["refused"]
                status = channel.unary_unary("/mosix.v1.Admin/ClusterStatus",
                                             request_serializer=pb.ClusterStatusRequest.SerializeToString,
                                             response_deserializer=pb.ClusterStatusReply.FromString)
                try:
                    await status(pb.ClusterStatusRequest(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            url = f"http://127.0.2.1:{metrics_port}/metrics"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            await node.stop(grace=0.1)

    text = asyncio.run(scenario())
    lines = set(text.splitlines())
    assert 'mosix_members{state="up"} 1.0' in lines
    assert 'mosix_members{state="down"} 0.0' in lines
    assert 'mosix_home_tasks{state="queued"} 1.0' in lines
    assert 'mosix_refusals_total{reason="task_malformed"} 1.0' in lines
    assert 'mosix_refusals_total{reason="credentials"} 1.0' in lines
    assert 'mosix_moves_total{outcome="moved"} 0.0' in lines
    assert "mosix_cpus 2.0" in lines
    assert "secretuser" not in text and "secret-command" not in text and "p1.1.1" not in text
