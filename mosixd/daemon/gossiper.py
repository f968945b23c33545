"""The gossip core on a clock and on gRPC: rounds of exchanges, pushes of news, relayed probes.

All membership decisions live in ``mosixd.core.gossip``; this module sends what the core
says to send, feeds back what comes back or fails, relays probes for peers, and logs each
membership change once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

import grpc
import grpc.aio

from mosixd.core.gossip import GossipView, NodeState
from mosixd.wire import codec
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire import mosix_pb2_grpc as rpc

log = logging.getLogger("mosixd")

#: Probes a node relays for others at once, by default; more are refused (RESOURCE_EXHAUSTED).
RELAYS_AT_ONCE = 32
#: Nodes heard of second-hand that are asked at once to prove who they are (under TLS).
VOUCHES_AT_ONCE = 4
#: Seconds a node id that failed to prove itself is not asked again; at most this many kept.
NOT_VOUCHED_FOR, NOT_VOUCHED_KEPT = 60.0, 1024
_CHANGE_LOG = {
    NodeState.SUSPECT: (logging.WARNING, "peer %s (%s) is suspect: it does not answer, nor do the peers asked to probe it"),
    NodeState.DOWN: (logging.WARNING, "peer %s (%s) is down: confirmed dead"),
    NodeState.LEFT: (logging.INFO, "peer %s (%s) left the cluster"),
    NodeState.UP: (logging.INFO, "peer %s (%s) is up again"),
    NodeState.BLOCKED: (logging.INFO, "peer %s (%s) is up again (blocked)"),
}


class ProbeRefused(Exception):
    """A relayed probe this node will not make; ``code`` is the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Gossiper:
    """Drives one node's ``GossipView``: its rounds, the exchanges it answers, the probes
    it relays."""

    def __init__(self, view: GossipView, *, interval: float, clock: Callable[[], float],
                 rng: random.Random, channel: Callable[[str], grpc.aio.Channel],
                 dial: Callable[[str, str], grpc.aio.Channel] | None = None) -> None:
        """``channel(address)``: the (kept) channel to the node gossip knows there. ``dial(
        address, node_id)``: a new channel to an address whose peer must show ``node_id``'s
        certificate, closed after use; given under TLS, where news waits for a certificate."""
        self.view = view
        self.interval = interval
        self._clock = clock
        self._rng = rng
        self._channel = channel
        self._dial = dial
        self._vouching: set[str] = set()
        self._not_vouched: dict[str, float] = {}  # node id -> when it failed to prove itself
        self._inflight: set[asyncio.Task[None]] = set()
        self._relays = 0
        self.relays_at_once = RELAYS_AT_ONCE
        self._unreachable: set[str] = set()
        self._generation = view.generation
        self._turned_away = 0
        # An exchange should end within the round; a relayed probe has two legs.
        self.timeout = max(0.2, min(interval, 1.0))

    def _message(self, address: str, *, window: bool = True) -> pb.GossipMessage:
        now = self._clock()
        entries = self.view.outgoing(now) if window else []
        return codec.gossip_message(self.view.node_id, self.view.address, entries,
                                    self.view.rumors_for(address, now), rumors_only=not window)

    def _take(self, reply: pb.GossipMessage, sender: str | None = None) -> None:
        """Merge what a peer sent (raises MalformedMessage before merging anything).
        ``sender``: the node a certificate proved sent it, if any."""
        entries, rumors = codec.entries_from_message(reply), codec.rumors_from_message(reply)
        now = self._clock()
        self.view.receive(entries, now, sender)
        self.view.hear(rumors, now, sender)
        self._log_changes()
        if self.view.unvouched:
            self._check_unvouched(now)

    # ---- news of nodes no certificate has vouched for yet (under TLS) --------------------

    def _check_unvouched(self, now: float) -> None:
        """Ask nodes heard of second-hand to prove themselves: dial the address given for
        each, expecting its certificate. A fake entry costs one dial a minute at most."""
        if self._dial is None:
            return
        room = VOUCHES_AT_ONCE - len(self._vouching)
        for node_id, address in self.view.take_unvouched(max(0, room)):
            refused = self._not_vouched.get(node_id)
            if node_id in self._vouching or (refused is not None and now - refused < NOT_VOUCHED_FOR):
                continue
            self._vouching.add(node_id)
            self._spawn(self._vouch(node_id, address))

    async def _vouch(self, node_id: str, address: str) -> None:
        assert self._dial is not None
        try:
            async with self._dial(address, node_id) as channel:
                reply = await rpc.GossipStub(channel).Exchange(self._message(address), timeout=self.timeout)
            if reply.sender_id != node_id:
                raise codec.MalformedMessage(f"it says it is {reply.sender_id[:64]!r}")
            self._take(reply, sender=node_id)  # its certificate named it: it speaks for itself
        except (grpc.aio.AioRpcError, codec.MalformedMessage) as exc:
            why = exc.code().name.lower() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            if len(self._not_vouched) >= NOT_VOUCHED_KEPT:
                self._not_vouched.pop(next(iter(self._not_vouched)))
            first = node_id not in self._not_vouched
            self._not_vouched[node_id] = self._clock()
            if first:
                log.warning("gossip named node %s at %s, but no certificate of that node answers there "
                            "(%s): not added", node_id[:64], address[:64], why)
        finally:
            self._vouching.discard(node_id)

    # ---- what the servicer calls ------------------------------------------------------

    def exchange(self, request: pb.GossipMessage) -> pb.GossipMessage:
        """Answer a peer: take in its window and news, reply with ours (news only to a push).
        Raises MalformedMessage, having merged nothing. Under TLS, the servicer has checked
        that the sender's certificate names ``request.sender_id``."""
        self._take(request, sender=request.sender_id)
        return self._message(request.sender_address, window=not request.rumors_only)

    async def probe(self, request: pb.ProbeRequest, time_left: float | None) -> pb.ProbeReply:
        """Relay a peer's probe to a member it could not reach (SWIM's ping-req)."""
        if not self.view.knows(request.target):
            raise ProbeRefused(grpc.StatusCode.INVALID_ARGUMENT,
                               f"mosix: {request.target!r} is not a member this node knows; it probes members only")
        if self._relays >= self.relays_at_once:
            raise ProbeRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"mosix: already relaying {self._relays} probes; try another helper")
        timeout = self.timeout if time_left is None else max(0.05, min(self.timeout, time_left - 0.05))
        self._relays += 1
        # Relayed as this node's own message: under TLS a node speaks only for itself, and
        # the asker's news is hearsay to the target like any other.
        message = pb.GossipMessage()
        message.CopyFrom(request.message)
        message.sender_id, message.sender_address = self.view.node_id, self.view.address
        try:
            reply = await rpc.GossipStub(self._channel(request.target)).Exchange(message, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return pb.ProbeReply(reached=False, error=f"{exc.code().name.lower()}: {exc.details()}")
        finally:
            self._relays -= 1
        return pb.ProbeReply(reached=True, reply=reply)

    # ---- the rounds ---------------------------------------------------------------------

    async def run(self) -> None:
        """Gossip every ``interval`` (with jitter) until cancelled."""
        while True:
            # Jitter keeps nodes started together from gossiping in lock-step.
            await asyncio.sleep(self.interval * self._rng.uniform(0.9, 1.1))
            now = self._clock()
            for target in self.view.choose_targets(now):
                self._spawn(self._exchange_with(target))
            for target in self.view.push_targets(now):
                self._spawn(self._push_to(target))
            self._log_changes()

    def _spawn(self, work: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def cancel(self) -> None:
        """Stop the exchanges and probes under way (the node stops)."""
        for task in list(self._inflight):
            task.cancel()

    @property
    def background(self) -> int:
        """Exchanges and probes under way."""
        return len(self._inflight)

    async def _exchange_with(self, address: str) -> None:
        try:
            reply = await self._send(address, self._message(address), self.timeout)
            # The channel expected the certificate of the node known there (any, for a seed).
            self._take(reply, sender=self.view.node_at(address))
        except (grpc.aio.AioRpcError, codec.MalformedMessage) as exc:
            self._report_unreachable(address, exc)
            helpers = self.view.contact_failed(address, self._clock())
            if helpers:
                reached = await self._probe_through(helpers, address)
                self.view.probe_result(address, reached, self._clock())
                self._log_changes()
            return
        self.view.contact_succeeded(address, self._clock())
        if address in self._unreachable:
            self._unreachable.discard(address)
            log.info("peer %s reachable again", address)

    async def _probe_through(self, helpers: list[str], address: str) -> bool:
        """Ask every helper at once to probe ``address``; True if any reached it."""
        # News only: the probe is about being alive (and telling the accused), not load.
        request = pb.ProbeRequest(target=address, message=self._message(address, window=False))

        async def ask(helper: str) -> bool:
            try:
                answer = await rpc.GossipStub(self._channel(helper)).Probe(request, timeout=2 * self.timeout + 0.1)
                if answer.reached:
                    self._take(answer.reply)
                return answer.reached
            except (grpc.aio.AioRpcError, codec.MalformedMessage):
                return False

        return any(await asyncio.gather(*(ask(h) for h in helpers)))

    async def _push_to(self, address: str) -> None:
        # News only; a failed push proves little (the round's exchange is the probe).
        try:
            reply = await self._send(address, self._message(address, window=False), self.timeout)
            self._take(reply, sender=self.view.node_at(address))
        except (grpc.aio.AioRpcError, codec.MalformedMessage):
            pass

    async def _send(self, address: str, message: pb.GossipMessage, timeout: float) -> pb.GossipMessage:
        return await rpc.GossipStub(self._channel(address)).Exchange(message, timeout=timeout)

    async def announce_leave(self, limit: int = 8) -> int:
        """Tell up to ``limit`` live peers at once that this node leaves; they spread it.
        Returns how many were told (or tried)."""
        now = self._clock()
        self.view.leave(now)
        targets = self.view.leave_targets(now, limit)
        if targets:
            await asyncio.gather(*(self._send(t, self._message(t), timeout=0.5) for t in targets),
                                 return_exceptions=True)
        return len(targets)

    # ---- telling the administrator ---------------------------------------------------------

    def _log_changes(self) -> None:
        changes = self.view.changes
        while changes:
            node_id, state = changes.popleft()
            level, text = _CHANGE_LOG[state]
            entry = self.view.entry(node_id, self._clock())
            log.log(level, text, node_id, entry.address if entry else "?")
        if self.view.generation != self._generation:
            log.warning("the cluster knew a later life of node id %s than this one (%d): its state "
                        "directory was reset; gossiping as life %d", self.view.node_id, self._generation,
                        self.view.generation)
            self._generation = self.view.generation
        if self.view.turned_away and not self._turned_away:  # said once: it may go on forever
            log.error("the cluster table is full (max_members %d): news of new nodes is dropped; "
                      "is a key holder announcing fake nodes?", self.view.config.max_members)
        self._turned_away = self.view.turned_away

    def _report_unreachable(self, address: str, exc: Exception) -> None:
        if address in self._unreachable:
            return  # said once; the core probes and retries
        self._unreachable.add(address)
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            log.error("peer %s refused our cluster key: %s", address, exc.details())
        elif isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            log.error("peer %s refused us (permission_denied): %s", address, exc.details())
        elif isinstance(exc, grpc.aio.AioRpcError):
            log.warning("peer %s unreachable (%s); probing it through others", address, exc.code().name.lower())
        else:
            log.warning("peer %s sent a malformed reply (%s); probing it through others", address, exc)
