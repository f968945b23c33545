"""The direct checkpoint stream of a move, from the frozen task straight to its target.

A move's target starts the task's interpreter as soon as it holds room for it, while the
task still runs on its source: Python, the runtime and the pickler load off the critical
path (a warm start). The target node listens on a fresh port and hands the listening socket
to that interpreter. The frozen task then streams its checkpoint to it directly, with no
daemon relaying the bytes. On the wire::

    token (TOKEN_SIZE bytes) | the checkpoint (``mosrun.runtime.checkpoint`` format)

The receiver checks the checksum as the bytes arrive and answers one byte: ACK, or NAK
followed by a one-line reason. The largest piece lands in memory the interpreter faulted in
while it waited (the room it reserved). A checkpoint stored at home (a failover) goes the
same way. Runs inside task processes and the daemon: standard library only (and the
checksum's module).
"""

from __future__ import annotations

import collections
import hmac
import os
import selectors
import socket
import struct
import time
from typing import Iterable

from mosrun.runtime import checkpoint, netaddr, precopy

TOKEN_SIZE = 32
ACK, NAK = b"+", b"-"
SLICE = 1 << 20          # checksummed as each slice arrives
MAX_HEADER = 1 << 20     # a checkpoint header is a few hundred bytes; more is garbage
MAX_WAITING_PER_PEER = 8  # connections from one address waiting to present a token; the
                          # oldest makes room for a newer one (a source sends at once)
MAX_BUFFERS = 1 << 16    # out-of-band buffers a pre-copy may announce
MAX_STATE = 1 << 40      # bytes they may add up to
MAX_PICKLE = 1 << 32     # the in-band pickle of a state
MAX_CHUNK = 16 << 20     # one pre-copied chunk
IDLE_TIMEOUT = 30.0      # a stream that stalls this long is abandoned


class TransferError(Exception):
    """The checkpoint did not get across; the message is one line for the user."""


def _connect(address: str, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection(netaddr.split(address), timeout=timeout)
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot reach the target at {address} ({exc})") from None
    sock.settimeout(IDLE_TIMEOUT)
    return sock


def _answer(sock: socket.socket, address: str) -> None:
    reply = bytearray()
    while len(reply) < 1024 and (chunk := sock.recv(1024)):
        reply += chunk
    if reply[:1] == ACK:
        return
    reason = reply[1:].decode(errors="replace").strip() if reply[:1] == NAK else ""
    raise TransferError(f"the target at {address} refused the checkpoint: {reason or 'it closed the stream'}")


def open_stream(address: str, token: bytes, timeout: float = 10.0) -> socket.socket:
    """A stream to the target waiting at ``address``, the move's token already sent (for a
    pre-copy, which then writes its records and calls :func:`answer`)."""
    sock = _connect(address, timeout)
    try:
        sock.sendall(token)
    except OSError as exc:
        sock.close()
        raise TransferError(f"the checkpoint stream to {address} broke ({exc})") from None
    return sock


def answer(sock: socket.socket, address: str) -> None:
    """Wait for the target's verdict on what was sent: TransferError if it refused it."""
    try:
        _answer(sock, address)
    except OSError as exc:
        raise TransferError(f"the checkpoint stream to {address} broke ({exc})") from None


def send(address: str, token: bytes, pieces: Iterable[bytes | memoryview], timeout: float = 10.0) -> None:
    """Stream checkpoint ``pieces`` to the target waiting at ``address`` ("host:port");
    returns once it has checked them. Raises TransferError."""
    sock = _connect(address, timeout)
    try:
        with sock:
            sock.sendall(token)
            for piece in pieces:
                sock.sendall(piece)
            _answer(sock, address)
    except OSError as exc:
        raise TransferError(f"the checkpoint stream to {address} broke ({exc})") from None


def send_file(address: str, token: bytes, path: str | os.PathLike, timeout: float = 10.0) -> None:
    """Stream a stored checkpoint file to the target at ``address`` (the kernel copies it)."""
    sock = _connect(address, timeout)
    try:
        with sock, open(path, "rb") as f:
            sock.sendall(token)
            sock.sendfile(f)
            _answer(sock, address)
    except OSError as exc:
        raise TransferError(f"the checkpoint stream to {address} broke ({exc})") from None


def _recv_exact(conn: socket.socket, n: int) -> bytearray:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        k = conn.recv_into(view[got:])
        if not k:
            raise TransferError(f"the checkpoint stream ended early ({got} of {n} bytes)")
        got += k
    return data


def _read_into(conn: socket.socket, data: bytearray, summed: checkpoint.BodySum, offset: int = 0) -> None:
    view, pos = memoryview(data), offset
    while pos < len(data):
        start, end = pos, min(len(data), pos + SLICE)
        while pos < end:
            k = conn.recv_into(view[pos:end])
            if not k:
                raise TransferError(f"the checkpoint stream ended early ({pos} of {len(data)} bytes)")
            pos += k
        summed.update(view[start:end])  # while the slice is still in the cache


def _allocate(sizes: list[int], room: bytearray | None) -> list[bytearray]:
    """Memory for pieces of ``sizes`` bytes. The largest takes ``room``, memory faulted in
    while the source still ran, so receiving does not wait for the kernel to supply fresh
    pages (on a virtual machine that is slower than the stream itself). The room is cut or
    grown to fit: the kernel remaps big blocks, it does not copy them."""
    largest = max(range(len(sizes)), key=sizes.__getitem__, default=None)
    out = []
    for i, n in enumerate(sizes):
        if i == largest and room is not None:
            if n < len(room):
                del room[n:]
            else:
                room += bytes(n - len(room))
            out.append(room)
        else:
            out.append(bytearray(n))
    return out


def _read_checkpoint(conn: socket.socket, room: bytearray | None,
                     start: bytes = b"") -> tuple[bytearray, list[bytearray]]:
    """One whole checkpoint from ``conn`` (``start``: its first bytes, already read), its
    checksum verified as it came: the header with the pickle, and each out-of-band buffer in
    its own bytearray (the restored state keeps those as they are)."""
    prefix = start + _recv_exact(conn, checkpoint.PREFIX_SIZE - len(start))
    size = checkpoint.header_size(prefix)
    if size > MAX_HEADER:
        raise checkpoint.CorruptCheckpoint(f"checkpoint header of {size} bytes is implausible")
    head = prefix + _recv_exact(conn, size - len(prefix))
    header = checkpoint.read_header(head)
    summed = checkpoint.body_sum(header.checksum_algorithm)
    data, *buffers = _allocate([size + header.payload_size, *header.buffers], room)
    data[:size] = head
    _read_into(conn, data, summed, size)
    for buffer in buffers:
        _read_into(conn, buffer, summed)
    checkpoint.check_sum(header, b"", summed.hexdigest())  # the sum of everything after the header
    return data, buffers


def _read_precopy(conn: socket.socket, room: bytearray | None) -> tuple[bytearray, list[bytearray]]:
    """A pre-copied checkpoint (``precopy``): buffers sent in chunks while the task ran, then
    the header and pickle, then the chunks changed since. The checksum of the whole is
    verified at the end, before anything is unpickled."""
    buffers: list[bytearray] = []
    data: bytearray | None = None
    header: checkpoint.CheckpointHeader | None = None
    while True:
        kind = _recv_exact(conn, 1)[0]
        if kind == precopy.LAYOUT and data is None and not buffers:
            count = struct.unpack(">I", _recv_exact(conn, 4))[0]
            if count > MAX_BUFFERS:
                raise checkpoint.CorruptCheckpoint(f"pre-copy of {count} buffers is implausible")
            sizes = list(struct.unpack(f">{count}Q", _recv_exact(conn, 8 * count)))
            if sum(sizes) > MAX_STATE:
                raise checkpoint.CorruptCheckpoint(f"pre-copy of {sum(sizes)} bytes is implausible")
            buffers = _allocate(sizes, room)
        elif kind == precopy.CHUNK_RECORD:
            _, index, offset, length = precopy.HEAD.unpack(bytes([kind]) + _recv_exact(conn, precopy.HEAD.size - 1))
            if index >= len(buffers) or offset + length > len(buffers[index]) or length > MAX_CHUNK:
                raise checkpoint.CorruptCheckpoint("a pre-copied chunk lies outside its buffer")
            view = memoryview(buffers[index])[offset:offset + length]
            got = 0
            while got < length:
                n = conn.recv_into(view[got:])
                if not n:
                    raise TransferError("the checkpoint stream ended inside a chunk")
                got += n
        elif kind == precopy.FINAL and data is None:
            length = struct.unpack(">Q", _recv_exact(conn, 8))[0]
            if length > MAX_PICKLE:
                raise checkpoint.CorruptCheckpoint(f"a checkpoint pickle of {length} bytes is implausible")
            data = _recv_exact(conn, length)
            header = checkpoint.read_header(data)
            if len(data) != checkpoint.header_size(data) + header.payload_size:
                raise checkpoint.CorruptCheckpoint("the checkpoint's pickle does not match its header")
            # The buffers the header lists: those pre-copied at their size, the others sent whole.
            buffers = [buffers[i] if i < len(buffers) and len(buffers[i]) == n else bytearray(n)
                       for i, n in enumerate(header.buffers)]
        elif kind == precopy.END and header is not None and data is not None:
            summed = checkpoint.body_sum(header.checksum_algorithm)
            for piece in (memoryview(data)[checkpoint.header_size(data):], *map(memoryview, buffers)):
                for start in range(0, len(piece), SLICE):
                    summed.update(piece[start:start + SLICE])
            checkpoint.check_sum(header, b"", summed.hexdigest())
            return data, buffers
        else:
            raise checkpoint.CorruptCheckpoint(f"unexpected record {kind} in a pre-copied checkpoint")


def receive(listener: socket.socket, token: bytes, timeout: float,
            room: bytearray | None = None) -> tuple[bytearray, list[bytearray]]:
    """Accept connections on ``listener`` until one presents ``token``, and return the
    checkpoint it carries, checked: ``(header and pickle, out-of-band buffers)``, for
    ``checkpoint.loads(data, buffers=buffers, checked=True)``.

    ``room``: memory held ready for the checkpoint's largest piece (see ``_allocate``).
    Connections without the token are dropped. Raises TransferError when nothing valid
    arrives within ``timeout`` seconds, CheckpointError when the checkpoint is damaged.
    """
    conn = _await_token(listener, token, time.monotonic() + timeout, timeout)
    with conn:
        conn.settimeout(IDLE_TIMEOUT)
        try:
            magic = bytes(_recv_exact(conn, len(precopy.MAGIC)))
            if magic == precopy.MAGIC:
                data = _read_precopy(conn, room)
            else:
                data = _read_checkpoint(conn, room, magic)
        except checkpoint.CheckpointError as exc:
            _say(conn, NAK + str(exc).encode()[:1000])
            raise
        except OSError as exc:
            raise TransferError(f"the checkpoint stream broke ({exc})") from None
        _say(conn, ACK)
        return data


def _await_token(listener: socket.socket, token: bytes, deadline: float, timeout: float) -> socket.socket:
    """The first connection to present ``token`` before ``deadline``, in blocking mode.

    Connections are read side by side, so one that stays silent delays nobody, and any number
    of strays cannot make the move fail before its deadline. At most MAX_WAITING_PER_PEER wait
    from one address: a newer one drops the oldest, so that a flood from the source's own
    host cannot keep the source's connection, which presents its token at once, out."""
    sel = selectors.DefaultSelector()
    waiting: dict[socket.socket, bytearray] = {}
    by_peer: dict[str, collections.deque[socket.socket]] = {}

    def forget(conn: socket.socket, peer: str) -> socket.socket:
        sel.unregister(conn)
        del waiting[conn]
        by_peer[peer].remove(conn)
        return conn

    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "")
    try:
        while (left := deadline - time.monotonic()) > 0:
            for key, _events in sel.select(timeout=left):
                if key.fileobj is listener:
                    for _ in range(64):  # bounded: the waiting connections need reading too
                        try:
                            conn, addr = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        peer = str(addr[0]) if isinstance(addr, tuple) else ""
                        queue = by_peer.setdefault(peer, collections.deque())
                        if len(queue) >= MAX_WAITING_PER_PEER:
                            forget(queue[0], peer).close()
                        conn.setblocking(False)
                        waiting[conn] = bytearray()
                        queue.append(conn)
                        sel.register(conn, selectors.EVENT_READ, peer)
                    continue
                conn, peer = key.fileobj, key.data  # type: ignore[assignment]
                if conn not in waiting:
                    continue  # dropped earlier in this batch
                got = waiting[conn]
                try:
                    chunk = conn.recv(TOKEN_SIZE - len(got))
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                got += chunk
                if not chunk or (len(got) == TOKEN_SIZE and not hmac.compare_digest(bytes(got), token)):
                    forget(conn, peer).close()  # closed, or a stray or hostile connection: not the source
                elif len(got) == TOKEN_SIZE:
                    forget(conn, peer).setblocking(True)
                    return conn
        raise TransferError(f"no checkpoint arrived within {timeout:.0f} s")
    finally:
        for conn in waiting:
            conn.close()
        sel.close()
        listener.setblocking(True)


def _say(conn: socket.socket, reply: bytes) -> None:
    try:
        conn.sendall(reply)
    except OSError:
        pass  # the sender is gone; its move fails on its side
