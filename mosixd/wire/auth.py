"""Cluster-key authentication for every RPC, between daemons and from clients.

Each call carries ``x-mosix-auth: v1:<unix time>:<nonce>:<hmac>`` where the HMAC-SHA256 over
the method name, time and nonce is keyed with the cluster key. The key itself never crosses
the wire. The time bounds replays to ``MAX_SKEW`` seconds (nodes are expected to run NTP,
as for Kerberos); mutual TLS is meant to be added as channel credentials in the two
``open_*channel`` functions below, leaving the per-call check in place.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
import grpc.aio

log = logging.getLogger("mosixd.wire.auth")

METADATA_KEY = "x-mosix-auth"
MAX_SKEW = 300.0
MIN_KEY_BYTES = 16
# Liveness probes (grpc.health.v1) reveal nothing and must work for plain health checkers.
UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class KeyFileError(Exception):
    """The cluster key file is missing, unreadable or too short (one-line message)."""


def load_key(path: Path) -> bytes:
    """Read the cluster key (surrounding whitespace ignored)."""
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise KeyFileError(f"cluster key file {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"cluster key file {path} is not readable by this user") from None
    except IsADirectoryError:
        raise KeyFileError(f"cluster key file {path} is a directory") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"cluster key file {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
    return key


def generate_key(path: Path) -> bytes:
    """Create a new random key file readable by its owner only (mode 0600)."""
    key = secrets.token_urlsafe(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return key


def _digest(key: bytes, method: str, stamp: str, nonce: str) -> str:
    msg = f"v1|{method}|{stamp}|{nonce}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, now: float | None = None) -> str:
    """The metadata value that authenticates one call of ``method``."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(8)
    return f"v1:{stamp}:{nonce}:{_digest(key, method, stamp, nonce)}"


def verify(key: bytes, method: str, token: str | None, now: float | None = None) -> str | None:
    """None if the token is valid for this call, else the reason it is refused."""
    if not token:
        return "no cluster-key credentials"
    parts = token.split(":")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return "malformed credentials"
    _, stamp, nonce, digest = parts
    if not hmac.compare_digest(digest, _digest(key, method, stamp, nonce)):
        return "wrong cluster key"
    if abs((time.time() if now is None else now) - int(stamp)) > MAX_SKEW:
        return f"credentials older than {MAX_SKEW:.0f}s (clock skew?)"
    return None


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


# ---- server side -------------------------------------------------------------------------


class _RefusalLog:
    """Logs refusals, at most one line per peer and reason every few seconds (no log floods)."""

    def __init__(self, every: float = 5.0) -> None:
        self._every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def note(self, peer: str, method: str, reason: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get((peer, reason), (-1e18, 0))
        if now - last < self._every:
            self._last[(peer, reason)] = (last, suppressed + 1)
            return
        more = f" (+{suppressed} more)" if suppressed else ""
        log.warning("refused %s from %s: %s%s", method, peer, reason, more)
        self._last[(peer, reason)] = (now, 0)


def _refusing_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)


class ServerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call that does not carry valid cluster-key credentials."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._log = _RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = _method_name(details.method)
        if method in UNAUTHENTICATED_METHODS:
            return await continuation(details)
        token = next((v for k, v in details.invocation_metadata or () if k == METADATA_KEY), None)
        reason = verify(self._key, method, token if isinstance(token, str) else None)
        if reason is None:
            return await continuation(details)
        peer = next((v for k, v in details.invocation_metadata or () if k == "x-mosix-node"), "?")
        self._log.note(str(peer), method, reason)
        return _refusing_handler(await continuation(details), f"mosix: {reason}")


# ---- client side -------------------------------------------------------------------------


def call_metadata(key: bytes, method: str, sender: str = "") -> list[tuple[str, str]]:
    """The metadata that authenticates one call of ``method`` ("/package.Service/Method")."""
    metadata = [(METADATA_KEY, sign(key, method))]
    if sender:
        metadata.append(("x-mosix-node", sender))
    return metadata


def _with_auth(key: bytes, details: Any, sender: str) -> Any:
    metadata = list(details.metadata or ())
    metadata += call_metadata(key, _method_name(details.method), sender)
    return details._replace(metadata=metadata)


class _AioAuthBase:
    def __init__(self, key: bytes, sender: str) -> None:
        self._key, self._sender = key, sender


# grpc.aio files each interceptor under the first call kind it implements (an elif chain),
# so every kind needs an interceptor object of its own.
class _AioUnaryUnaryAuth(_AioAuthBase, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_auth(self._key, details, self._sender), request)


class _AioUnaryStreamAuth(_AioAuthBase, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_auth(self._key, details, self._sender), request)


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
        return continuation(_with_auth(self._key, details, self._sender), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(_with_auth(self._key, details, self._sender), request_iterator)


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Task output and checkpoints travel in MiB chunks: fewer, larger HTTP/2 frames.
    ("grpc.http2.max_frame_size", 4 * 1024 * 1024),
    # Fail fast towards dead peers instead of waiting out long reconnect backoffs.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def open_aio_channel(target: str, key: bytes, sender: str = "") -> grpc.aio.Channel:
    """An asyncio channel whose calls are authenticated with the cluster key.

    Stream-stream calls (a task's stream, ``Host.Execute``) are not intercepted: give them
    ``call_metadata`` yourself. grpc.aio emulates a reader-writer stream under an interceptor
    with a queue and a task per call that outlive the call until the garbage collector finds
    them, which a home daemon starting thousands of tasks cannot afford."""
    interceptors = [kind(key, sender) for kind in (_AioUnaryUnaryAuth, _AioUnaryStreamAuth, _AioStreamUnaryAuth)]
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


def open_channel(target: str, key: bytes, sender: str = "") -> grpc.Channel:
    """A blocking channel (for the command-line clients) with the same authentication."""
    return grpc.intercept_channel(grpc.insecure_channel(target, options=CHANNEL_OPTIONS), _SyncAuth(key, sender))
