"""The checksum of a checkpoint's body: made to catch damage, not forgery.

New checkpoints carry XXH3-64, which runs at several times memory-copy speed, so checking
costs little on a move's critical path; CRC-32 where the xxhash package is missing. Older
checkpoints may carry SHA-256. xxhash is imported when first used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zlib
from typing import Protocol

from mosrun.runtime.checkpoint.errors import CorruptCheckpoint


class BodySum(Protocol):
    """A running checksum, as hashlib and xxhash objects are."""

    def update(self, piece: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32:
    """CRC-32 with the interface of a hashlib object (zlib is always there)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, piece: bytes | bytearray | memoryview, /) -> None:
        self._value = zlib.crc32(piece, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_checksum() -> str:
    """What new checkpoints carry: XXH3-64, about five times as fast as CRC-32 so the sum is
    cheap on a move; CRC-32 where the xxhash package is missing."""
    return "xxh3" if importlib.util.find_spec("xxhash") is not None else "crc32"


def body_sum(algorithm: str) -> BodySum:
    """A running checksum of a checkpoint's body, fed piece by piece with ``update``.

    ``algorithm`` as a header names it ("xxh3", "crc32", "sha256", ...). CorruptCheckpoint
    when this node cannot compute it.
    """
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "xxh3":
        try:
            import xxhash  # a dependency of mosix; imported when first used
        except ImportError:
            raise CorruptCheckpoint("checkpoint uses the xxh3 checksum, which needs the xxhash package") from None
        return xxhash.xxh3_64()
    if algorithm in ("sha256", "sha512", "blake2b"):  # older checkpoints
        return hashlib.new(algorithm)
    raise CorruptCheckpoint(f"checkpoint uses an unknown checksum {algorithm!r}")
