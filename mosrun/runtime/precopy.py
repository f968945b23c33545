"""Pre-copy: a move sends the task's big buffers while it still runs, and at the freeze only
the parts that changed since, as live migration of virtual machines does.

At a first safe point the task notes which big buffers its state holds (the bytearrays and
arrays that travel out of band) and goes on; a thread of the task then streams them to the
move's target in chunks of :data:`CHUNK` bytes, each a copy whose hash it keeps. Round after
round it sends again the chunks whose hash has changed, until what is left is small, no longer
shrinks, or :data:`MAX_ROUNDS` have passed. Then the task freezes at its next safe point, and
only the small pickle and the chunks changed since go. The target verifies the checksum of the
whole checkpoint as usual before it restores anything.

On the wire, after the move's token (``transfer``): :data:`MAGIC`, then records:

    LAYOUT  u8 1 | u32 n | n x u64 size          the buffers seen at the first safe point
    CHUNK   u8 2 | u32 buffer | u64 offset | u32 length | data
    FINAL   u8 3 | u64 length | checkpoint header and pickle (``checkpoint`` format)
    END     u8 4                                  then the target answers as for a plain checkpoint

After FINAL the buffers are those the checkpoint's header lists; any whose size differs from
the layout is sent whole. Standard library only (xxhash when installed, for the chunk hashes).
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from typing import Any, Callable

MAGIC = b"MOSIXPRE"
CHUNK = 1 << 20
MIN_BYTES = 16 << 20     # below this, one stop-and-copy is as quick: no pre-copy
MAX_ROUNDS = 8
SMALL_ENOUGH = 4 << 20   # dirty bytes left that a freeze sends at once
LAYOUT, CHUNK_RECORD, FINAL, END = 1, 2, 3, 4
HEAD = struct.Struct(">BIQI")    # kind, buffer, offset, length of a CHUNK record


def _hasher() -> Callable[[Any], int]:
    try:
        import xxhash

        return xxhash.xxh3_64_intdigest
    except ImportError:
        return zlib.crc32


class PreCopy:
    """The source side of one pre-copied move, over a connection already carrying the token."""

    def __init__(self, sock: socket.socket, buffers: list[Any], ready: Callable[[], None]) -> None:
        """``buffers``: the state's big buffers (bytearrays, or memoryviews of other memory);
        ``ready``: called, from the sending thread, once the task should freeze."""
        self.sock = sock
        self.buffers = buffers
        self.ready = ready
        self.hash = _hasher()
        self.sizes = [len(b) if isinstance(b, bytearray) else memoryview(b).nbytes for b in buffers]
        self.sent: list[list[int | None]] = [[None] * -(-n // CHUNK) for n in self.sizes]
        self.bytes = 0
        self.rounds = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mosix-precopy", daemon=True)

    @staticmethod
    def total(buffers: list[Any]) -> int:
        return sum(len(b) if isinstance(b, bytearray) else memoryview(b).nbytes for b in buffers)

    def start(self) -> None:
        sizes = self.sizes
        self.sock.sendall(MAGIC + struct.pack(f">BI{len(sizes)}Q", LAYOUT, len(sizes), *sizes))
        self._thread.start()

    def _run(self) -> None:
        try:
            dirty = self._all()
            while not self._stop.is_set():
                self._send(dirty)
                self.rounds += 1
                left = self._dirty()
                left_bytes = len(left) * CHUNK
                if left_bytes <= SMALL_ENOUGH or self.rounds >= MAX_ROUNDS or len(left) >= len(dirty):
                    break
                dirty = left
        except BaseException as exc:  # the freeze reports it; the task goes on where it is
            self.failure = exc
        finally:
            self.ready()

    def _all(self) -> list[tuple[int, int]]:
        return [(i, c) for i, chunks in enumerate(self.sent) for c in range(len(chunks))]

    def _chunk(self, i: int, c: int) -> bytes:
        """A copy of chunk ``c`` of buffer ``i``: taken at once, so its hash is what was sent."""
        buffer = self.buffers[i]
        if isinstance(buffer, bytearray):
            return bytes(buffer[c * CHUNK:(c + 1) * CHUNK])  # no export held: the task may resize it
        return bytes(memoryview(buffer).cast("B")[c * CHUNK:(c + 1) * CHUNK])

    def _send(self, chunks: list[tuple[int, int]]) -> None:
        for i, c in chunks:
            if self._stop.is_set():
                return
            data = self._chunk(i, c)
            self.sock.sendall(HEAD.pack(CHUNK_RECORD, i, c * CHUNK, len(data)))
            self.sock.sendall(data)
            self.sent[i][c] = self.hash(data)
            self.bytes += len(data)

    def _dirty(self) -> list[tuple[int, int]]:
        """The chunks whose content is no longer what was sent."""
        return [(i, c) for i, c in self._all() if self.hash(self._chunk(i, c)) != self.sent[i][c]]

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def finish(self, pieces: list[bytes | memoryview], payload_end: int) -> None:
        """At the freeze: send the checkpoint's header and pickle (``pieces[:payload_end]``),
        then every chunk of its buffers (``pieces[payload_end:]``) not already at the target."""
        self._stop.set()
        self._thread.join()
        if self.failure is not None:
            raise self.failure
        head = b"".join(bytes(p) for p in pieces[:payload_end])
        self.sock.sendall(struct.pack(">BQ", FINAL, len(head)) + head)
        for i, piece in enumerate(pieces[payload_end:]):
            view = memoryview(piece).cast("B")
            same = i < len(self.sizes) and view.nbytes == self.sizes[i]  # else the target takes it whole
            for c in range(-(-view.nbytes // CHUNK)):
                data = view[c * CHUNK:(c + 1) * CHUNK]
                if same and self.sent[i][c] == self.hash(data):
                    continue
                self.sock.sendall(HEAD.pack(CHUNK_RECORD, i, c * CHUNK, data.nbytes))
                self.sock.sendall(data)
                self.bytes += data.nbytes
        self.sock.sendall(bytes([END]))
