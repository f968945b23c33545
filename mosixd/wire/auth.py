"""Cluster-key authentication for every RPC, between daemons and from clients.

Each call carries ``x-mosix-auth: v2:<unix time>:<nonce>:<body>:<hmac>``. The HMAC-SHA256,
keyed with the cluster key, covers the method name, time, nonce and ``body``: the SHA-256 of
the serialized request for calls with one request, ``-`` for calls that stream requests
(``Host.Execute``). The key itself never crosses the wire. A server refuses a request whose
bytes do not match the signed digest (a captured token cannot carry another body), a token
it has already accepted (each nonce is remembered for the time the token is valid), and a
time more than ``MAX_SKEW`` seconds off (nodes are expected to run NTP, as for Kerberos).
A streamed call is protected by its nonce alone: over a plaintext network, a token copied in
flight can still be raced to the server with another body. Mutual TLS, which closes that,
goes in the two ``open_*channel`` functions below, leaving the per-call check in place.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
import grpc.aio

from mosixd.wire.tls import GENERIC_NAME, TlsCredentials, read_file, write_private

log = logging.getLogger("mosixd.wire.auth")

METADATA_KEY = "x-mosix-auth"
MAX_SKEW = 300.0
MIN_KEY_BYTES = 16
UNBOUND = "-"  # the body field of a call whose requests stream
# Liveness probes (grpc.health.v1) reveal nothing and must work for plain health checkers.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class KeyFileError(Exception):
    """The cluster key file is missing, unreadable or too short (one-line message)."""


def load_key(path: Path) -> bytes:
    """Read the cluster key (surrounding whitespace ignored)."""
    key = read_file(path, "cluster key file", KeyFileError).strip()
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"cluster key file {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
    return key


def generate_key(path: Path) -> bytes:
    """Create a new random key file readable by its owner only (mode 0600)."""
    key = secrets.token_urlsafe(32).encode()
    write_private(path, key + b"\n")
    return key


def body_digest(request: bytes) -> str:
    """The ``body`` field that binds a token to one serialized request."""
    return hashlib.sha256(request).hexdigest()[:32]


def _digest(key: bytes, method: str, stamp: str, nonce: str, body: str) -> str:
    msg = f"v2|{method}|{stamp}|{nonce}|{body}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, body: str = UNBOUND, now: float | None = None) -> str:
    """The metadata value that authenticates one call of ``method`` with this ``body``."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(12)
    return f"v2:{stamp}:{nonce}:{body}:{_digest(key, method, stamp, nonce, body)}"


class Credentials:
    """A token's fields, once its HMAC and time are checked."""

    __slots__ = ("stamp", "nonce", "body")

    def __init__(self, stamp: int, nonce: str, body: str) -> None:
        self.stamp, self.nonce, self.body = stamp, nonce, body


def check(key: bytes, method: str, token: str | None, now: float | None = None) -> Credentials | str:
    """The token's fields if it is valid for a call of ``method``, else why it is refused.
    Freshness against replays is the server's ``NonceCache``; the body, its ``bind``."""
    if not token:
        return "no cluster-key credentials"
    parts = token.split(":")
    if len(parts) != 5 or parts[0] != "v2" or not parts[1].isdigit() or not parts[2] or not parts[3]:
        return "malformed credentials"
    _, stamp, nonce, body, digest = parts
    if not hmac.compare_digest(digest, _digest(key, method, stamp, nonce, body)):
        return "wrong cluster key"
    if abs((time.time() if now is None else now) - int(stamp)) > MAX_SKEW:
        return f"credentials older than {MAX_SKEW:.0f}s (clock skew?)"
    return Credentials(int(stamp), nonce, body)


def verify(key: bytes, method: str, token: str | None, now: float | None = None) -> str | None:
    """None if the token's HMAC and time are valid for a call of ``method``, else why not."""
    checked = check(key, method, token, now)
    return checked if isinstance(checked, str) else None


class NonceCache:
    """The nonces of accepted tokens, each kept until its token could no longer pass the time
    check, so that a token is accepted once. Bounded: when full, the oldest are dropped and
    tokens not newer than the newest dropped are refused, which keeps replays out at the
    price of refusing very old (but valid) tokens under a flood."""

    def __init__(self, capacity: int = 200_000, skew: float = MAX_SKEW) -> None:
        self.capacity, self.skew = capacity, skew
        self._order: deque[tuple[int, str]] = deque()
        self._seen: set[str] = set()
        self._floor = -1  # stamps at or below this are refused (their nonces were dropped)

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, stamp: int, nonce: str, now: float | None = None) -> str | None:
        """Record the token; None if it is new, else why it is refused."""
        now = time.time() if now is None else now
        while self._order and self._order[0][0] < now - self.skew:
            self._seen.discard(self._order.popleft()[1])
        if nonce in self._seen:
            return "replayed credentials (this token was already used)"
        if stamp <= self._floor:
            return "credentials too old to be checked against replays; retry"
        while len(self._seen) >= self.capacity:
            dropped_stamp, dropped = self._order.popleft()
            self._seen.discard(dropped)
            self._floor = max(self._floor, dropped_stamp)
        self._seen.add(nonce)
        # Stamps arrive nearly in order; a token a little older than the newest joins the end
        # and expires a little late, which only keeps its nonce longer.
        self._order.append((max(stamp, self._order[-1][0]) if self._order else stamp, nonce))
        return None


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


# ---- server side -------------------------------------------------------------------------


class RefusalLog:
    """Logs refusals, at most one line per peer and reason every few seconds (no log floods)."""

    def __init__(self, every: float = 5.0, most: int = 1000) -> None:
        self._every, self._most = every, most
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self.count = 0  # refusals noted, logged or not

    def note(self, peer: str, method: str, reason: str) -> None:
        self.count += 1
        now = time.monotonic()
        if len(self._last) >= self._most:  # peers name themselves: never let them grow this
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._every}
            if len(self._last) >= self._most:
                return
        last, suppressed = self._last.get((peer, reason), (-1e18, 0))
        if now - last < self._every:
            self._last[(peer, reason)] = (last, suppressed + 1)
            return
        more = f" (+{suppressed} more)" if suppressed else ""
        log.warning("refused %s from %s: %s%s", method, peer[:64], reason, more)
        self._last[(peer, reason)] = (now, 0)


def _unparsed(_raw: bytes) -> None:
    """A refused call's request is never parsed: garbage cannot make the server log."""
    return None


def _refusing_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=_unparsed)
    codec = {"request_deserializer": _unparsed, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)


class _Mismatch:
    """What the checking deserializer hands on instead of a request: why it was refused."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        self.code, self.reason = code, reason


def _bound_handler(handler: grpc.RpcMethodHandler, body: str, on_refusal: Callable[[str], None]) -> grpc.RpcMethodHandler:
    """``handler`` (one request, one reply) that runs only if the request's bytes are those
    the token was signed for, and answers malformed bytes with INVALID_ARGUMENT, both
    without a traceback in the log."""
    parse = handler.request_deserializer

    def deserialize(raw: bytes) -> Any:
        if not hmac.compare_digest(body_digest(raw), body):
            return _Mismatch(grpc.StatusCode.UNAUTHENTICATED, "the request is not the one its credentials were signed for")
        try:
            return parse(raw) if parse is not None else raw
        except Exception:  # any decoding error: the sender's fault, not ours
            return _Mismatch(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Mismatch):
            on_refusal(request.reason)
            await context.abort(request.code, f"mosix: {request.reason}")
        return await handler.unary_unary(request, context)

    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=deserialize,
                                               response_serializer=handler.response_serializer)


class ServerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call that does not carry valid, fresh cluster-key credentials bound to
    its request (see the module docstring)."""

    def __init__(self, key: bytes, nonces: NonceCache | None = None) -> None:
        self._key = key
        self._nonces = nonces or NonceCache()
        self._log = RefusalLog()

    @property
    def refused(self) -> int:
        """Calls refused so far (bad, stale, replayed or unbound credentials)."""
        return self._log.count

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = _method_name(details.method)
        if method in UNAUTHENTICATED_METHODS:
            return await continuation(details)
        metadata = details.invocation_metadata or ()
        token = next((v for k, v in metadata if k == METADATA_KEY), None)
        peer = str(next((v for k, v in metadata if k == "x-mosix-node"), "?"))
        handler = await continuation(details)
        checked = check(self._key, method, token if isinstance(token, str) else None)
        if isinstance(checked, Credentials):
            one_request = handler is not None and not handler.request_streaming
            if one_request and checked.body == UNBOUND:
                checked = "credentials not bound to the request"
            elif not one_request and checked.body != UNBOUND:
                checked = "malformed credentials"
            elif replayed := self._nonces.admit(checked.stamp, checked.nonce):
                checked = replayed
        if isinstance(checked, str):
            self._log.note(peer, method, checked)
            return _refusing_handler(handler, f"mosix: {checked}")
        if handler is not None and not handler.request_streaming:
            if handler.response_streaming:  # none of ours; refuse rather than leave it unbound
                return _refusing_handler(handler, "mosix: unsupported call shape")
            return _bound_handler(handler, checked.body, lambda reason: self._log.note(peer, method, reason))
        return handler


# ---- client side -------------------------------------------------------------------------


def call_metadata(key: bytes, method: str, sender: str = "", request: Any = None) -> list[tuple[str, str]]:
    """The metadata that authenticates one call of ``method`` ("/package.Service/Method"):
    bound to ``request`` (a protobuf message) for a call with one request, unbound (for a
    stream of requests) when it is None."""
    body = UNBOUND if request is None else body_digest(request.SerializeToString())
    metadata = [(METADATA_KEY, sign(key, method, body))]
    if sender:
        metadata.append(("x-mosix-node", sender))
    return metadata


def _with_auth(key: bytes, details: Any, sender: str, request: Any = None) -> Any:
    metadata = list(details.metadata or ())
    metadata += call_metadata(key, _method_name(details.method), sender, request)
    return details._replace(metadata=metadata)


class _AioAuthBase:
    def __init__(self, key: bytes, sender: str) -> None:
        self._key, self._sender = key, sender


# grpc.aio files each interceptor under the first call kind it implements (an elif chain),
# so every kind needs an interceptor object of its own.
class _AioUnaryUnaryAuth(_AioAuthBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_auth(self._key, details, self._sender, request), request)


class _AioUnaryStreamAuth(_AioAuthBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_auth(self._key, details, self._sender, request), request)


class _AioStreamUnaryAuth(_AioAuthBase, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(_with_auth(self._key, details, self._sender), request_iterator)


class _SyncAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, key: bytes, sender: str) -> None:
        self._key, self._sender = key, sender

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender, request), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender, request), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender), request_iterator)


#: Every call and stream between daemons pings its peer after KEEPALIVE_TIME seconds without
#: traffic and fails if no answer comes within KEEPALIVE_TIMEOUT: a dead peer on a silent link
#: (a partition, a pulled cable) is noticed within about their sum, not TCP's many minutes.
KEEPALIVE_TIME, KEEPALIVE_TIMEOUT = 10.0, 20.0
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
    ("grpc.http2.max_pings_without_data", 0),  # a silent task stream is pinged as long as it lives
]
#: What a server needs to take (and give) those pings: by default it would answer pings more
#: often than every 5 minutes by closing the connection ("too many pings").
SERVER_KEEPALIVE_OPTIONS = [
    *KEEPALIVE_OPTIONS,
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_TIME * 1000) // 2),
    ("grpc.http2.max_ping_strikes", 0),
]

CHANNEL_OPTIONS = [
    *KEEPALIVE_OPTIONS,
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Task output and checkpoints travel in MiB chunks: fewer, larger HTTP/2 frames.
    ("grpc.http2.max_frame_size", 4 * 1024 * 1024),
    # Fail fast towards dead peers instead of waiting out long reconnect backoffs.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def open_aio_channel(target: str, key: bytes | None, sender: str = "", *, tls: TlsCredentials | None = None,
                     expect: str = GENERIC_NAME) -> grpc.aio.Channel:
    """An asyncio channel to a peer daemon: mutual TLS when ``tls`` is given (the peer must
    show a certificate naming ``expect``: its node id, or any node of the cluster), else
    calls authenticated with the cluster key.

    Stream-stream calls (a task's stream, ``Host.Execute``) are not intercepted: give them
    ``call_metadata`` yourself. grpc.aio emulates a reader-writer stream under an interceptor
    with a queue and a task per call that outlive the call until the garbage collector finds
    them, which a home daemon starting thousands of tasks cannot afford."""
    if tls is not None:
        options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", expect)]
        return grpc.aio.secure_channel(target, tls.channel(), options=options)
    assert key is not None, "a channel needs TLS or the cluster key"
    interceptors = [kind(key, sender) for kind in (_AioUnaryUnaryAuth, _AioUnaryStreamAuth, _AioStreamUnaryAuth)]
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


def open_channel(target: str, key: bytes | None, sender: str = "", *, tls: TlsCredentials | None = None,
                 expect: str = GENERIC_NAME) -> grpc.Channel:
    """A blocking channel (for the command-line clients and tests), as ``open_aio_channel``."""
    if tls is not None:
        options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", expect)]
        return grpc.secure_channel(target, tls.channel(), options=options)
    assert key is not None, "a channel needs TLS or the cluster key"
    return grpc.intercept_channel(grpc.insecure_channel(target, options=CHANNEL_OPTIONS), _SyncAuth(key, sender))
