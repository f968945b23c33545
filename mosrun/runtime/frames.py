"""The light framing spoken between mosrun and its home daemon, between a task's runtime and
the daemon that runs it, and on a task's streams to mosrun (``mosrun.commands.dataplane``). Standard
library only, so no side pays for importing gRPC.

A frame is ``!II`` (header length, payload length), a JSON object (the header, always with a
``"t"`` type), then raw payload bytes. JSON, not pickle: a daemon must never unpickle what a
user process sends it.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 16 << 20

Frame = tuple[dict[str, Any], bytes]


# A task's direct stream home (``mosrun.commands.dataplane``) opens with one frame, the
# stream's token as its payload, and mosrun answers STREAM_ACK once it has taken the stream.
STREAM_TOKEN_SIZE = 32
STREAM_ACK = b"+"
STREAM_KINDS = ("stdout", "stderr", "files")


class ProtocolError(Exception):
    """A frame that breaks the format (sizes, JSON, missing type)."""


def encode_head(header: dict[str, Any], payload_size: int) -> bytes:
    """A frame without its payload, for writers that send the payload separately (no copy)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or payload_size > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large ({len(head)} + {payload_size} bytes)")
    return PREFIX.pack(len(head), payload_size) + head


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame as bytes."""
    return encode_head(header, len(payload)) + payload


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header without a type")
    return header


def check_sizes(prefix: bytes | memoryview, max_payload: int = MAX_PAYLOAD) -> tuple[int, int]:
    """A frame's (header, payload) lengths from its prefix; ProtocolError, before anything
    more is read, if either is over its limit (``max_payload``: this socket's)."""
    head_len, payload_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER:
        raise ProtocolError(f"frame too large ({head_len} + {payload_len} bytes)")
    if payload_len > max_payload:
        raise ProtocolError(f"frame payload of {payload_len} bytes is over the limit of {max_payload} here")
    return head_len, payload_len


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> Frame | None:
    """Read one frame from a blocking socket; None at a clean end of stream."""
    prefix = _recv_exactly(sock, PREFIX.size)
    if prefix is None:
        return None
    head_len, payload_len = check_sizes(prefix)
    head = _recv_exactly(sock, head_len)
    payload = _recv_exactly(sock, payload_len) if payload_len else b""
    if head is None or payload is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_header(head), payload


def greeting(task_id: str, epoch: int, kind: str, token: bytes) -> bytes:
    """The frame a node sends first on a stream it opens to mosrun for a task."""
    return encode({"t": "stream", "task": task_id, "epoch": epoch, "kind": kind}, token)


def send_frame(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    """Write one frame to a blocking socket."""
    sock.sendall(encode(header, payload))


async def read_frame(reader: "asyncio.StreamReader",  # noqa: F821 - no asyncio import here
                     max_payload: int = MAX_PAYLOAD) -> Frame | None:
    """Read one frame from an asyncio stream; None at a clean end of stream. A payload over
    ``max_payload`` is refused (ProtocolError) before it is read."""
    import asyncio

    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame") from None
        return None
    head_len, payload_len = check_sizes(prefix, max_payload)
    try:
        head = await reader.readexactly(head_len)
        payload = await reader.readexactly(payload_len) if payload_len else b""
    except asyncio.IncompleteReadError:
        raise ProtocolError("stream ended inside a frame") from None
    return decode_header(head), payload
