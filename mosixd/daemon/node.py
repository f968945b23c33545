"""The node daemon: drives the gossip core and load sampler on a clock and puts them on gRPC.

All decisions live in the sans-IO cores; this module only runs loops, opens channels, binds
sockets and turns failures into one clear log line each.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import platform
import random
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mosixd.core.gossip import GossipConfig, GossipView, NodeState, NodeView
from mosixd.core.policy import Placement
from mosixd.core.rebalance import MoveDecision, Rebalancer
from mosixd.daemon.gossiper import Gossiper
from mosixd.daemon.load import HostLoadSource, LoadSampler, TaskLoadSource, calibrate_speed, detect_cpus
from mosixd.daemon.service import add_services
from mosixd.daemon import metrics
from mosixd.daemon.userapi import UserApi
from mosixd.home.context import HomeNode, SessionLimits
from mosixd.home.sessions import HomeSessions
from mosixd.host.hosted import HostedTask
from mosixd.host.spawner import Spawner
from mosixd.host.tasks import GuestRules, TaskTable
from mosixd.settings.config import Config
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire import mosix_pb2_grpc as rpc
from mosixd.wire.auth import SERVER_KEEPALIVE_OPTIONS, ServerAuthInterceptor, call_metadata, open_aio_channel
from mosixd.wire.tls import GENERIC_NAME, TlsCredentials
from mosrun.runtime import netaddr

log = logging.getLogger("mosixd")

SAMPLE_INTERVAL = 1.0
BALANCE_INTERVAL = 1.0
LEAVE_MOVES_AT_ONCE = 4   # guests moved away in parallel when the node leaves
SERVER_OPTIONS = [
    # Two daemons must never share a port silently.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.http2.max_frame_size", 4 * 1024 * 1024),
    *SERVER_KEEPALIVE_OPTIONS,
]


class StartupError(Exception):
    """The daemon cannot start (port in use, socket taken, state dir unusable): one line."""


def next_generation(state_dir: Path) -> int:
    """Count restarts in the state dir so peers can tell a new life from stale gossip."""
    path = state_dir / "generation"
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state_dir.stat().st_uid == os.geteuid():
            os.chmod(state_dir, 0o700)  # checkpoints and scratch directories live under it
        previous = int(path.read_text().strip() or 0) if path.exists() else 0
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{previous + 1}\n")
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        raise StartupError(f"state dir {state_dir} is not usable: {exc}") from None
    return previous + 1


def build_sampler(config: Config, task_pids: Callable[[], Iterable[int]],
                  task_counts: Callable[[], tuple[int, int]]) -> LoadSampler:
    """A load sampler for this node's load source, CPUs and speed (calibrated if not set)."""
    source = HostLoadSource() if config.load_source == "host" else TaskLoadSource(task_pids)
    speed = config.speed or calibrate_speed()
    return LoadSampler(source, cpus=config.cpus or detect_cpus(), speed=speed, task_counts=task_counts)


class NodeDaemon:
    """One mosix node: gossip, load sampling, and the gRPC servers for peers and clients."""

    def __init__(self, config: Config, key: bytes | None, *, generation: int, tls: TlsCredentials | None = None,
                 sampler: LoadSampler | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        """``tls``: the node's certificate (mutual TLS between nodes); without it, ``key``
        authenticates every call."""
        self.config = config
        self.node_id = config.node_id
        self.generation = generation
        self.python = platform.python_version()
        self._key = key
        self._tls = tls
        self._clock = clock
        self._rng = rng or random.Random()
        self.spawner = Spawner()
        advertise_host = netaddr.split(config.advertise)[0]
        self.tasks = TaskTable(config.node_id, config.state_dir, self.spawner, own_load=lambda: self._own().load,
                               blocked=lambda: self._own().state is NodeState.BLOCKED, cpuset=config.cpuset,
                               host=advertise_host, home_grace=config.home_restart,
                               rules=GuestRules(config.run_as_root, config.deny_users, config.homes,
                                                config.max_guest_tasks, config.max_tasks_per_user))
        self._sampler = sampler or build_sampler(config, self.tasks.pids, self.tasks.counts)
        self.placement = Placement()
        self.rebalancer = Rebalancer(rng=self._rng)
        self.home = HomeSessions(HomeNode(
            node_id=config.node_id, generation=generation, python=self.python,
            advertise_host=advertise_host, state_dir=config.state_dir,
            placement=self.placement, now=self.now, cluster_view=self.cluster_view, task_stream=self.task_stream,
            limits=SessionLimits(config.max_sessions, config.max_sessions_per_user, config.launch_timeout,
                                 config.checkpoint_mb, config.home_restart)))
        self.tools = UserApi(self, limits=self.home.limits, admin_group=config.admin_group)
        now = clock()
        self.view = GossipView(
            config.node_id, config.advertise,
            GossipConfig(interval=config.gossip_interval, window=config.window,
                         suspect_rounds=max(1, round(config.down_after / config.gossip_interval)),
                         vouch=tls is not None),
            now, generation=generation, load=self._sampler.sample(now), rng=self._rng,
        )
        for peer in config.peers:
            if peer != config.advertise:
                self.view.add_seed(peer)
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self.gossip = Gossiper(self.view, interval=config.gossip_interval, clock=clock, rng=self._rng,
                               channel=self.channel, dial=self._dial if tls is not None else None)
        self._server: grpc.aio.Server | None = None
        self._interceptors: list[ServerAuthInterceptor] = []
        self._metrics: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._leaving: asyncio.Task[None] | None = None
        self._announced = 0  # peers told that this node leaves
        self.tcp_port: int | None = None

    # ---- what the servicers call ----------------------------------------------------

    def exchange(self, request: pb.GossipMessage) -> pb.GossipMessage:
        """Answer a peer's gossip (push-pull); raises MalformedMessage, merging nothing."""
        return self.gossip.exchange(request)

    async def probe(self, request: pb.ProbeRequest, time_left: float | None) -> pb.ProbeReply:
        """Relay a peer's probe of a member it cannot reach."""
        return await self.gossip.probe(request, time_left)

    def cluster_view(self) -> list[NodeView]:
        return self.view.view(self._clock())

    def task_list(self) -> list[pb.TaskInfo]:
        """mosps: the tasks this node owns (wherever they run) and the tasks it runs."""
        infos: dict[str, pb.TaskInfo] = {}
        for t in self.tasks.tasks.values():
            infos[t.spec.task_id] = pb.TaskInfo(
                id=t.spec.task_id, user=t.spec.user, home=t.spec.home, where=self.node_id, state="running",
                started=t.started, cpu=t.cpu, rss=t.rss, command=" ".join(t.spec.argv), pid=t.pid)
        for r in self.home.records.values():
            hosted = infos.get(r.id)
            infos[r.id] = pb.TaskInfo(
                id=r.id, user=r.user, home=self.node_id, where=r.where, state=r.state, started=r.started,
                cpu=hosted.cpu if hosted else r.cpu, rss=hosted.rss if hosted else r.rss,
                command=r.command, pid=r.pid, queue=self.home.queue.position(r.id))
        return sorted(infos.values(), key=lambda i: i.started)

    def refusals(self) -> dict[str, int]:
        """Requests this node refused so far, by reason (for the metrics)."""
        counts = {"credentials": sum(i.refused for i in self._interceptors), "session_limit": self.home.refused,
                  "tools": self.tools.refused}
        counts.update({f"task_{reason}": n for reason, n in self.tasks.refusals.items()})
        return counts

    def tables(self) -> dict[str, int]:
        """How many entries the daemon's own tables hold: none may outlive the task it is for."""
        return {"sessions": self.home.sessions(), "tool_connections": self.tools.connections(),
                "task_records": len(self.home.records),
                "live_tasks": len(self.home.live), "hosted_tasks": len(self.tasks.tasks),
                "starting": self.tasks.starting, "reservations": sum(self.placement.pending().values()),
                "background_jobs": len(self._inflight) + self.gossip.background,
                "peer_channels": len(self._channels), "members": self.view.members()}

    async def host_task(self, requests: AsyncIterator[pb.HomeMessage],
                        send: Callable[[pb.HostEvent], Awaitable[None]], caller: str | None = None) -> None:
        """Run a task for its home, on the stream it opened (see ``TaskTable.execute``);
        ``caller``: the node the stream's certificate names (None without TLS)."""
        await self.tasks.execute(requests, send, caller)

    async def migrate(self, request: pb.MigrateRequest) -> pb.MigrateReply:
        """Move a task: done by its home node (named by the task id), so forward if need be."""
        home = request.task_id.split(".", 1)[0]
        if home == self.node_id or not home:
            return await self.home.mover.migrate(request.task_id, request.target, request.uid)
        view = next((v for v in self.cluster_view() if v.id == home), None)
        if view is None or view.state in (NodeState.DOWN, NodeState.LEFT):
            return pb.MigrateReply(ok=False, message=f"the home node {home} of task {request.task_id} is not reachable")
        try:
            return await rpc.AdminStub(self.channel(view.address)).Migrate(request, timeout=900)
        except grpc.aio.AioRpcError as exc:
            return pb.MigrateReply(ok=False, message=f"home node {home}: {exc.details()}")

    def _own(self) -> NodeView:
        return self.view.view(self._clock())[0]

    def now(self) -> float:
        return self._clock()

    @property
    def session_socket(self) -> Path:
        """Where mosrun connects: beside the daemon's gRPC socket."""
        return self.config.socket.with_name("mosrun.sock")

    def channel(self, address: str) -> grpc.aio.Channel:
        """The (cached) authenticated channel to a peer daemon. Under TLS, the peer must show
        the certificate of the node gossip knows at that address (any node's, for a seed)."""
        expect = (self.view.node_at(address) or GENERIC_NAME) if self._tls else ""
        channel = self._channels.get((address, expect))
        if channel is None:
            channel = self._channels[(address, expect)] = self._dial(address, expect or GENERIC_NAME)
        return channel

    def _dial(self, address: str, expect: str) -> grpc.aio.Channel:
        """A new channel to ``address`` whose peer must show node ``expect``'s certificate
        (under TLS; GENERIC_NAME: any node of the cluster). The caller closes it."""
        return open_aio_channel(address, self._key, self.node_id, tls=self._tls, expect=expect)

    def task_stream(self, address: str) -> grpc.aio.StreamStreamCall:
        """A new task stream (``Host.Execute``) to the peer at ``address``, authenticated."""
        if self._tls is not None:  # the certificate says who we are
            return rpc.HostStub(self.channel(address)).Execute()
        metadata = call_metadata(self._key, "/mosix.v1.Host/Execute", self.node_id)
        return rpc.HostStub(self.channel(address)).Execute(metadata=metadata)

    def set_blocked(self, blocked: bool) -> NodeView:
        now = self._clock()
        self.view.set_blocked(blocked, now)
        log.info("node %s", "blocked: guests refused" if blocked else "no longer blocked")
        return self.view.view(now)[0]

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the TCP and Unix-socket listeners and start the loops."""
        self.spawner.start()
        # Under TLS the handshake authenticates every caller as a node of the cluster.
        interceptors = [] if self._tls is not None else [ServerAuthInterceptor(self._key or b"")]
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        add_services(server, self)
        health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self.tcp_port = self._bind_tcp(server)
        self._claim_socket()
        await server.start()
        self._server = server
        self._interceptors = interceptors
        await self.tools.start(self.config.socket)
        if self.config.metrics_listen:
            try:
                self._metrics = metrics.serve(self, self.config.metrics_listen)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {self.config.metrics_listen}: {exc.strerror}") from None
        await self.home.start(self.session_socket)
        await _maybe_await(health_servicer.set("", health_pb2.HealthCheckResponse.SERVING))
        self._tasks = [asyncio.create_task(self._sample_loop()), asyncio.create_task(self.gossip.run())]
        if self.config.balance:
            self._tasks.append(asyncio.create_task(self._balance_loop()))
        log.info("node %s up on %s (socket %s), generation %d, %d peer(s) to contact",
                 self.node_id, self.config.advertise, self.config.socket,
                 self.view.view(self._clock())[0].generation, len(self.config.peers))

    def _bind_tcp(self, server: grpc.aio.Server) -> int:
        try:
            if self._tls is not None:
                port = server.add_secure_port(self.config.listen, self._tls.server())
            else:
                port = server.add_insecure_port(self.config.listen)
        except RuntimeError:
            port = 0
        if not port:
            raise StartupError(f"cannot listen on {self.config.listen}: {_bind_reason(self.config.listen)}")
        return port

    def _claim_socket(self) -> None:
        """Make room for the tools' socket, unless another daemon serves it."""
        path = self.config.socket
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the socket directory {path.parent}: {exc.strerror}") from None
        if path.exists():
            if _socket_in_use(path):
                raise StartupError(f"another mosixd is already serving {path}")
            path.unlink()  # stale, left by a daemon that was killed

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def shutdown(self) -> None:
        """SIGTERM or SIGINT: leave gracefully, then stop. A second signal stops at once."""
        if self._stopped.is_set():
            return
        if self._leaving is not None:
            log.info("node %s: stopping now, without waiting for its guests to move", self.node_id)
            self._leaving.cancel()
            return
        self._leaving = asyncio.ensure_future(self.leave())
        self._leaving.add_done_callback(self._then_stop)

    def _then_stop(self, leaving: asyncio.Future[None]) -> None:
        if not leaving.cancelled() and leaving.exception() is not None:
            log.error("node %s: leaving failed: %r", self.node_id, leaving.exception())
        self._inflight.add(asyncio.ensure_future(self.stop()))  # held, so it is not collected

    async def leave(self) -> None:
        """Leave the cluster without taking guests with it: take no new task, tell the peers,
        and move every guest away, or end it with the reason sent to its home. Bounded by
        ``leave_timeout``; the node's own tasks stay until it stops."""
        deadline = self._clock() + self.config.leave_timeout
        self.tasks.leaving = True
        for task in self._tasks:
            task.cancel()  # no more sampling, gossip or balancing: the node is on its way out
        self.view.set_blocked(True, self._clock())
        await self._announce_leave()
        guests = self.tasks.guests()
        if guests:
            log.info("node %s leaving: moving %d guest task(s) away (at most %.0f s)", self.node_id,
                     len(guests), self.config.leave_timeout)
        room = asyncio.Semaphore(LEAVE_MOVES_AT_ONCE)
        await asyncio.gather(*(self._evacuate(task, deadline, room) for task in guests))

    async def _evacuate(self, task: HostedTask, deadline: float, room: asyncio.Semaphore) -> None:
        """Move one guest away before the node leaves; end it if it cannot move."""
        task_id = task.spec.task_id
        async with room:
            why = "it has no safe points (a Python task must call mosrun.resumable())"
            if task.movable:
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        reply = await self.migrate(pb.MigrateRequest(task_id=task_id, target="balance", uid=0))
                        if reply.ok:
                            await asyncio.shield(task.exited)  # the copy here ends once the new one runs
                            log.info("task %s moved to %s before the node left", task_id, reply.node)
                            return
                        why = reply.message
                except TimeoutError:
                    why = f"no move finished within the node's leave timeout ({self.config.leave_timeout:g} s)"
        await self.tasks.evict(task_id, f"it could not move: {why}")

    async def _announce_leave(self) -> None:
        """Tell the live peers at once that this node leaves, so none waits for a timeout."""
        if self._announced:
            return
        self._announced = max(1, await self.gossip.announce_leave())

    async def stop(self, grace: float = 1.0) -> None:
        """Tell peers we leave, stop the server, remove the socket."""
        if self._stopped.is_set():
            return
        for task in self._tasks:
            task.cancel()
        self.gossip.cancel()
        await self.tools.stop()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.shutdown)
        await self.home.stop()
        await self._announce_leave()
        if self._server is not None:
            await self._server.stop(grace)
        await self.tasks.stop()
        for channel in self._channels.values():
            await channel.close()
        for path in (self.config.socket, self.session_socket):
            path.unlink(missing_ok=True)
        self.spawner.stop()
        log.info("node %s stopped", self.node_id)
        self._stopped.set()

    # ---- loops --------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            now = self._clock()
            try:
                vector = await asyncio.to_thread(self._sampler.sample, now)
            except Exception:  # a psutil hiccup must not stop the node
                log.exception("load sampling failed")
                continue
            self.view.set_load(vector, self._clock())
            self.placement.observe(self.cluster_view(), self._clock())

    async def _balance_loop(self) -> None:
        """Preemptive migration: once a second, maybe move one of the tasks running here."""
        while True:
            await asyncio.sleep(BALANCE_INTERVAL * self._rng.uniform(0.9, 1.1))
            now = self._clock()
            decision = self.rebalancer.decide(self.node_id, self.cluster_view(), self.tasks.running(now), now)
            if decision is not None:
                task = asyncio.create_task(self._auto_move(decision))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _auto_move(self, decision: MoveDecision) -> None:
        log.info("balancing: moving %s to %s (%s)", decision.task_id, decision.target, decision.reason)
        reply = await self.migrate(pb.MigrateRequest(task_id=decision.task_id, target=decision.target, uid=0))
        if reply.ok:
            self.rebalancer.observe_transfer(reply.state_bytes, reply.transfer_seconds)
            self.rebalancer.moved(decision, self._clock())
        else:
            log.info("balancing: %s", reply.message)
            self.rebalancer.failed(decision, self._clock())


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _bind_reason(address: str) -> str:
    """Why binding failed, asked of the OS directly (grpc only says it failed)."""
    host, port = netaddr.split(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use (is another mosixd running?)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no such local address"
            return exc.strerror or str(exc)
    return "the gRPC server refused the address"
