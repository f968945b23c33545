"""Several daemons in one process: the real servicers and gRPC, fast gossip, no subprocesses."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import grpc.aio
import pytest
from conftest import free_port

from mosixd.daemon.load import LoadSampler
from mosixd.daemon.node import NodeDaemon
from mosixd.settings.config import load_config
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire import mosix_pb2_grpc as rpc
from mosixd.wire.auth import open_aio_channel

KEY = b"in-process-test-key-0123456789"
INTERVAL = 0.1


class ConstantDemand:
    """A load source that reports a fixed run queue."""

    def __init__(self, demand: float) -> None:
        self.value = demand

    def demand(self) -> float:
        return self.value


def make_node(tmp_path: Path, i: int, port: int, peers: list[str], key: bytes = KEY,
              demand: float = 0.0, **settings: object) -> NodeDaemon:
    """Node p{i} on 127.0.2.{i}; ``settings``: config fields to set besides (or instead of) these."""
    config = load_config(None, {
        "node_id": f"p{i}", "listen": f"127.0.2.{i}:{port}", "peers": ",".join(peers),
        "state_dir": str(tmp_path / f"p{i}"), "socket": str(tmp_path / f"p{i}.sock"), "key_file": "/unused",
        "gossip_interval": INTERVAL, "down_after": 1.0, "cpus": 2, "speed": 1.0, **settings,
    })
    sampler = LoadSampler(ConstantDemand(demand), cpus=2, speed=1.0)
    return NodeDaemon(config, key, sampler=sampler, generation=1, rng=random.Random(i))


async def until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.05)


def states(node: NodeDaemon) -> dict[str, str]:
    return {v.id: v.state.value for v in node.cluster_view()}


def test_four_daemons_converge_leave_and_refuse_a_stranger(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port([f"127.0.2.{i}" for i in range(1, 6)])
        # Only p1 is named as a seed: p3 and p4 learn about each other through gossip.
        nodes = [make_node(tmp_path, 1, port, [])]
        nodes += [make_node(tmp_path, i, port, [f"127.0.2.1:{port}"], demand=i) for i in (2, 3, 4)]
        for node in nodes:
            await node.start()
        try:
            everyone = {f"p{i}": "up" for i in (1, 2, 3, 4)}
            await until(lambda: all(states(n) == everyone for n in nodes), 10)
            # Loads travel: p4 reports demand 4 on 2 CPUs once its sampler has run.
            await until(lambda: any(v.id == "p4" and v.load.load > 0 for v in nodes[0].cluster_view()), 5)

            stranger = make_node(tmp_path, 5, port, [f"127.0.2.1:{port}"], key=b"another-key-0123456789abc")
            await stranger.start()
            await asyncio.sleep(10 * INTERVAL)
            assert "p5" not in states(nodes[0])
            assert set(states(stranger)) == {"p5"}
            await stranger.stop()

            await nodes[3].stop()
            await until(lambda: all(states(n)["p4"] == "left" for n in nodes[:3]), 5)
        finally:
            for node in nodes:
                await node.stop(grace=0.1)

    asyncio.run(scenario())


def test_malformed_gossip_is_refused_with_invalid_argument(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port(["127.0.2.1"])
        node = make_node(tmp_path, 1, port, [])
        await node.start()
        channel = open_aio_channel(f"127.0.2.1:{port}", KEY)
        try:
            stub = rpc.GossipStub(channel)
            bad = pb.GossipMessage(entries=[pb.GossipEntry(node_id="x", address="h:1", age=float("nan"))])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Exchange(bad, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed gossip" in (err.value.details() or "")
            assert set(states(node)) == {"p1"}, "nothing of a malformed message is kept"
            # Without any credentials at all:
            bare = grpc.aio.insecure_channel(f"127.0.2.1:{port}")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpc.AdminStub(bare).ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await bare.close()
        finally:
            await channel.close()
            await node.stop(grace=0.1)

    asyncio.run(scenario())


def test_a_probe_is_relayed_to_members_only_and_within_a_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port([f"127.0.2.{i}" for i in (1, 2, 3)])
        seed = [f"127.0.2.1:{port}"]
        nodes = [make_node(tmp_path, 1, port, []), make_node(tmp_path, 2, port, seed), make_node(tmp_path, 3, port, seed)]
        for node in nodes:
            await node.start()
        channel = open_aio_channel(f"127.0.2.2:{port}", KEY, "p1")
        try:
            everyone = {f"p{i}": "up" for i in (1, 2, 3)}
            await until(lambda: all(states(n) == everyone for n in nodes), 10)
            stub = rpc.GossipStub(channel)
            p3 = f"127.0.2.3:{port}"
            accusation = pb.GossipMessage(sender_id="p1", sender_address=f"127.0.2.1:{port}", rumors_only=True, rumors=[
                pb.MemberRumor(node_id="p3", address=p3, generation=1, incarnation=0, status=pb.MemberRumor.SUSPECT)])
            answer = await stub.Probe(pb.ProbeRequest(target=p3, message=accusation), timeout=5)
            assert answer.reached and not answer.reply.entries  # news only
            # p3 heard what it was accused of and refuted it, in the very answer.
            assert any(r.node_id == "p3" and r.status == pb.MemberRumor.ALIVE and r.incarnation == 1
                       for r in answer.reply.rumors)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Probe(pb.ProbeRequest(target="127.0.2.9:1", message=accusation), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a member" in (err.value.details() or "")
            nodes[1].gossip.relays_at_once = 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Probe(pb.ProbeRequest(target=p3, message=accusation), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "try another helper" in (err.value.details() or "")
            nodes[1].gossip.relays_at_once = 32

            await nodes[2].stop(grace=0.1)  # a member that is gone: not reached, and why
            answer = await stub.Probe(pb.ProbeRequest(target=p3, message=accusation), timeout=5)
            assert not answer.reached and answer.error
        finally:
            await channel.close()
            for node in nodes:
                await node.stop(grace=0.1)

    asyncio.run(scenario())
