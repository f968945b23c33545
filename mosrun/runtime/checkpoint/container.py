"""The checkpoint format of a task's resumable state.

One self-describing container, written and read as a sequence of pieces::

    MAGIC | format version u16 | header length u32 | CRC32 of header u32 | header (JSON)
    | pickle payload | out-of-band buffer 0 | buffer 1 | ...

The header holds a checksum of everything after it: XXH3-64, which runs at several times
memory-copy speed, so checking costs little on a move's critical path (CRC-32 when xxhash is
missing; older checkpoints may carry SHA-256). It is made to catch damage, not forgery:
checkpoints travel only between authenticated nodes. A damaged or truncated checkpoint is
refused before one byte is unpickled. Pickling uses protocol 5; large numpy arrays,
bytes and bytearrays are handed back as views of the state's own memory, never copied.
This runs inside task processes: standard library only at import; cloudpickle, dill and
xxhash are imported when first used.
"""


from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass, fields

from mosrun.runtime.checkpoint import pickling
from mosrun.runtime.checkpoint.checksum import body_sum, new_checksum
from mosrun.runtime.checkpoint.errors import CorruptCheckpoint, IncompatibleCheckpoint

FORMAT_VERSION = 1
MAGIC = b"MOSIXCKP"
_PREFIX = struct.Struct(">HII")  # format version, header length, CRC32 of the header
_PREFIX_END = len(MAGIC) + _PREFIX.size


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint says about itself, readable without unpickling anything."""

    version: int
    python: str  # "3.11.7"; major.minor must match to load (code objects are version-bound)
    task_id: str
    epoch: int
    created: float  # unix time
    payload_size: int
    buffers: tuple[int, ...]  # sizes of the out-of-band buffers, in order
    checksum: str  # "xxh3:<hex>" or "crc32:<hex>" (older: "sha256:<hex>") of everything after the header
    pickler: str  # "cloudpickle" | "dill" | "pickle"
    kept: tuple[int, ...] = ()  # which buffers are big bytearrays of the state, restored as is
    stdin: int = 0  # bytes of its stdin the task had taken: a restored copy reads on from there

    @property
    def total_size(self) -> int:
        """Bytes after the header: the pickle plus every buffer."""
        return self.payload_size + sum(self.buffers)

    @property
    def checksum_algorithm(self) -> str:
        """"xxh3", "crc32", "sha256", ...: what ``body_sum`` needs to check this checkpoint."""
        return self.checksum.partition(":")[0]


def dumps(state: object, *, task_id: str, epoch: int, stdin: int = 0) -> list[bytes | memoryview]:
    """Pickle ``state`` into checkpoint pieces: the header, the pickle, then each buffer.

    Send or write the pieces in order; their concatenation is what ``loads`` reads. Large
    buffers are memoryviews of the state's own memory (no copy): leave the state alone
    until they are written. cloudpickle is tried first, then dill; when neither can pickle
    the state, ``UnpicklableState`` names the first attribute that fails and its type.
    """
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, not {epoch!r}")
    pickled = pickling.pickle_state(state)
    algorithm = new_checksum()
    summed = body_sum(algorithm)
    for piece in (*pickled.payload, *pickled.buffers):
        summed.update(piece)
    v = sys.version_info
    header = CheckpointHeader(
        version=FORMAT_VERSION, python=f"{v.major}.{v.minor}.{v.micro}", task_id=task_id,
        epoch=int(epoch), created=time.time(), payload_size=sum(len(p) for p in pickled.payload),
        buffers=tuple(b.nbytes for b in pickled.buffers), checksum=f"{algorithm}:{summed.hexdigest()}",
        pickler=pickled.pickler, kept=tuple(pickled.kept), stdin=int(stdin))
    text = json.dumps(asdict(header), separators=(",", ":")).encode()
    return [MAGIC + _PREFIX.pack(FORMAT_VERSION, len(text), zlib.crc32(text)) + text,
            *pickled.payload, *pickled.buffers]


def warm_up() -> None:
    """Import the pickler and the checksum now: a move's target does it before the task is
    frozen, not after."""
    pickling.warm_up()
    body_sum(new_checksum())


def _parse_header(view: memoryview) -> tuple[CheckpointHeader, int]:
    """The header and the offset of the payload; CorruptCheckpoint if anything is off."""
    if len(view) < _PREFIX_END:
        raise CorruptCheckpoint(f"checkpoint is truncated ({len(view)} bytes)")
    if view[:len(MAGIC)] != MAGIC:
        raise CorruptCheckpoint("not a mosix checkpoint (bad magic)")
    version, size, crc = _PREFIX.unpack_from(view, len(MAGIC))
    if version != FORMAT_VERSION:
        raise CorruptCheckpoint(f"checkpoint format version {version} is not supported "
                                f"(this mosix reads version {FORMAT_VERSION})")
    end = _PREFIX_END + size
    if len(view) < end:
        raise CorruptCheckpoint("checkpoint is truncated inside its header")
    if zlib.crc32(view[_PREFIX_END:end]) != crc:
        raise CorruptCheckpoint("checkpoint header is damaged (CRC mismatch)")
    try:
        known = {f.name for f in fields(CheckpointHeader)}
        raw = {k: v for k, v in json.loads(bytes(view[_PREFIX_END:end])).items() if k in known}
        header = CheckpointHeader(**{**raw, "buffers": tuple(raw.get("buffers", ())),
                                     "kept": tuple(raw.get("kept", ()))})
        ok = (header.version == version and header.pickler in pickling.PICKLERS
              and all(type(n) is int and n >= 0
                      for n in (header.payload_size, header.epoch, header.stdin, *header.buffers))
              and all(type(i) is int and 0 <= i < len(header.buffers) for i in header.kept)
              and isinstance(header.task_id, str) and isinstance(header.checksum, str)
              and isinstance(header.python, str))
    except (ValueError, TypeError, AttributeError) as exc:
        raise CorruptCheckpoint(f"checkpoint header is unreadable ({pickling.one_line(exc)})") from None
    if not ok:
        raise CorruptCheckpoint("checkpoint header is inconsistent")
    return header, end


def read_header(data: bytes | bytearray | memoryview | str | os.PathLike) -> CheckpointHeader:
    """The header alone, payload unchecked: cheap, for listing stored checkpoints.

    ``data`` is checkpoint bytes (a prefix holding the header is enough) or a file path.
    """
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            prefix = f.read(_PREFIX_END)
            size = _PREFIX.unpack_from(prefix, len(MAGIC))[1] if len(prefix) == _PREFIX_END else 0
            data = prefix + f.read(size)
    return _parse_header(memoryview(data).cast("B"))[0]


def header_size(prefix: bytes | bytearray | memoryview) -> int:
    """From the first :data:`PREFIX_SIZE` bytes of a checkpoint: the size of its whole
    header (prefix included), so a reader knows how much to read before ``read_header``."""
    view = memoryview(prefix).cast("B")
    if len(view) < _PREFIX_END or view[:len(MAGIC)] != MAGIC:
        raise CorruptCheckpoint("not a mosix checkpoint (bad magic)")
    return _PREFIX_END + _PREFIX.unpack_from(view, len(MAGIC))[1]


PREFIX_SIZE = _PREFIX_END


def check_sum(header: CheckpointHeader, body: bytes | bytearray | memoryview, digest: str | None = None) -> None:
    """Raise CorruptCheckpoint unless ``body`` (everything after the header) matches the
    header's checksum. ``digest``: the sum already computed while the body arrived, with
    ``body_sum(algorithm)`` for the algorithm the header names."""
    expected = header.checksum.partition(":")[2]
    if digest is None:
        summed = body_sum(header.checksum_algorithm)
        summed.update(body)
        digest = summed.hexdigest()
    if digest != expected:
        raise CorruptCheckpoint(f"checkpoint of task {header.task_id} epoch {header.epoch} "
                                "is corrupt (checksum mismatch)")


def loads(data: bytes | bytearray | memoryview, *, buffers: list[bytearray] | None = None,
          checked: bool = False) -> tuple[CheckpointHeader, object]:
    """Verify a whole checkpoint, then unpickle it: ``(header, state)``.

    Nothing is unpickled unless magic, format version, sizes, checksum and Python version
    all hold (``checked``: the checksum was verified as the bytes arrived). From a
    bytearray, large arrays are restored in place (no copy); from read-only data they are
    copied once, so the restored state stays writable. ``buffers``: the out-of-band
    buffers received apart, ``data`` then ending with the pickle; they become the state's
    big bytearrays and arrays as they are.
    """
    view = memoryview(data).cast("B")
    header, pos = _parse_header(view)
    expected = pos + (header.payload_size if buffers is not None else header.total_size)
    if len(view) != expected:
        what = "truncated" if len(view) < expected else "followed by stray bytes"
        raise CorruptCheckpoint(f"checkpoint is {what} ({len(view)} of {expected} bytes)")
    if buffers is not None and [len(b) for b in buffers] != list(header.buffers):
        raise CorruptCheckpoint("checkpoint buffers do not match its header")
    if not checked:
        if buffers is not None:
            raise ValueError("buffers received apart must have been checked as they came")
        check_sum(header, view[pos:])
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if header.python.split(".")[:2] != here.split("."):
        raise IncompatibleCheckpoint(f"checkpoint was written by Python {header.python}; "
                                     f"Python {here} cannot load it (major.minor must match)")
    payload, pos = view[pos:pos + header.payload_size], pos + header.payload_size
    out_of_band: list[memoryview | bytearray] = list(buffers) if buffers is not None else []
    for size in header.buffers if buffers is None else ():
        # numpy builds arrays on these buffers: read-only memory would give read-only arrays
        out_of_band.append(bytearray(view[pos:pos + size]) if view.readonly else view[pos:pos + size])
        pos += size
    state = pickling.unpickle(header.pickler, payload, out_of_band, header.kept,
                              f"task {header.task_id} epoch {header.epoch}")
    return header, state
