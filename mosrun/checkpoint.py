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

import functools
import hashlib
import importlib
import importlib.util
import io
import json
import os
import pickle
import re
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

FORMAT_VERSION = 1
MAGIC = b"MOSIXCKP"
_PREFIX = struct.Struct(">HII")  # format version, header length, CRC32 of the header
_PREFIX_END = len(MAGIC) + _PREFIX.size
_BIG = 1 << 20  # from this size a buffer is its own piece; below, copying is cheaper than a piece
_PICKLERS = ("cloudpickle", "dill", "pickle")
_WALK_DEPTH, _WALK_BUDGET = 8, 2000  # bound the search for the attribute that fails


class CheckpointError(Exception):
    """A checkpoint cannot be made or read; the message is one line for the user."""


class UnpicklableState(CheckpointError):
    """Part of the state cannot be pickled; the message names where and its type."""


class CorruptCheckpoint(CheckpointError):
    """Bad magic, unknown format version, truncated data or checksum mismatch."""


class IncompatibleCheckpoint(CheckpointError):
    """Intact, but from another Python major.minor or a pickler not installed here."""


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

    @property
    def total_size(self) -> int:
        """Bytes after the header: the pickle plus every buffer."""
        return self.payload_size + sum(self.buffers)

    @property
    def checksum_algorithm(self) -> str:
        """"xxh3", "crc32", "sha256", ...: what ``body_sum`` needs to check this checkpoint."""
        return self.checksum.partition(":")[0]


class _Refused(TypeError):
    def __init__(self, obj: object) -> None:
        super().__init__(f"objects of type {_typename(obj)} cannot be pickled")


@functools.lru_cache(maxsize=1)
def _refused_types() -> tuple[type, ...]:
    # dill would pickle these, but a lock or an OS file belongs to this process on this
    # machine: a copy restored elsewhere would silently change what the task does.
    import _thread
    return (_thread.LockType, _thread.RLock, io.FileIO, io.BufferedReader, io.BufferedWriter,
            io.BufferedRandom, io.BufferedRWPair, io.TextIOWrapper)


def _typename(obj: object) -> str:
    t = type(obj)
    mod = {"builtins": "", "_io": "io", "_socket": "socket"}.get(t.__module__, t.__module__)
    name = f"{mod}.{t.__qualname__}" if mod else t.__qualname__
    return {"_thread.lock": "threading.Lock", "_thread.RLock": "threading.RLock"}.get(name, name)


class _Refusing:
    """Pickler mixin: refuse what must never be carried to another node."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, _refused_types()):
            raise _Refused(obj)
        parent = getattr(super(), "reducer_override", None)
        return parent(obj) if parent is not None else NotImplemented


@functools.lru_cache(maxsize=None)
def _pickler_class(name: str) -> type:
    base = pickle.Pickler if name == "pickle" else importlib.import_module(name).Pickler
    return type(f"_{name}Pickler", (_Refusing, base), {})


def _available() -> list[str]:
    """Picklers to try, best first; the standard pickle only when neither extra is installed."""
    return [name for name in _PICKLERS[:2] if importlib.util.find_spec(name)] or ["pickle"]


class _Gather:
    """Pickler output sink that keeps big bytes/bytearrays of the state as views.

    Picklers pass a large bytes/bytearray straight to ``write`` (bypassing their frame
    buffer), so keeping a view instead of copying leaves the data where it is.
    """

    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.small = bytearray()

    def write(self, data: object) -> int:
        # an in-band PickleBuffer may be a multi-dimensional or Fortran-ordered array
        pb = isinstance(data, pickle.PickleBuffer)
        view = data.raw() if pb else memoryview(data).cast("B")  # type: ignore[union-attr, arg-type]
        if view.nbytes >= _BIG and type(data) in (bytes, bytearray):
            self.pieces += [bytes(self.small), view] if self.small else [view]
            self.small = bytearray()
        else:
            self.small += view
        return view.nbytes

    def done(self) -> list[bytes | memoryview]:
        return self.pieces + [bytes(self.small)] if self.small else self.pieces


def _holds_big_bytearray(obj: object, budget: int = _WALK_BUDGET) -> bool:
    """Whether a short walk of ``obj`` finds a bytearray of at least ``_BIG`` bytes."""
    todo, seen = [obj], {id(obj)}
    while todo and budget > 0:
        item = todo.pop()
        if type(item) is bytearray:
            if len(item) >= _BIG:
                return True
            continue
        if isinstance(item, (str, bytes, int, float, complex, type)) or item is None:
            continue
        for _, child in _children(item):
            budget -= 1
            if id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    return False


def _dump(name: str, obj: object, sink: object, buffers: list[memoryview], kept: list[int]) -> None:
    def take(pb: pickle.PickleBuffer) -> bool:
        view = pb.raw()
        if view.nbytes < _BIG:
            return True  # stays in band
        buffers.append(view)
        return False

    pickler = _pickler_class(name)(sink, protocol=5, buffer_callback=take)
    if _holds_big_bytearray(obj):
        # Big bytearrays go out of band too, by persistent id: a receiver reads each into the
        # very bytearray the restored state keeps (in band, unpickling copies them again).
        # Only then, as the pickler calls persistent_id for every object.
        index: dict[int, int] = {}  # persistent ids are not memoized: one buffer per bytearray

        def persistent_id(item: object) -> object:
            if type(item) is bytearray and len(item) >= _BIG:
                if id(item) not in index:
                    index[id(item)] = len(buffers)
                    kept.append(len(buffers))
                    buffers.append(memoryview(item))
                return ("mosix-buffer", index[id(item)])
            return None
        pickler.persistent_id = persistent_id
    pickler.dump(obj)


def _children(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [(f"[{_short(k)}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [(f"{{{_short(v)}}}", v) for v in obj]
    attrs = getattr(obj, "__dict__", None)
    out = list(attrs.items()) if isinstance(attrs, dict) and not isinstance(obj, type) else []
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                out.append((slot, getattr(obj, slot)))
    return [(f".{k}", v) for k, v in out]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _locate(obj: object, path: str, name: str, depth: int, budget: list[int],
            seen: set[int]) -> tuple[str, object] | None:
    """Depth first: the deepest attribute/item under ``obj`` that fails to pickle alone."""
    for suffix, child in _children(obj):
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if id(child) in seen:
            continue
        seen.add(id(child))
        try:
            _dump(name, child, _Gather(), [], [])
            continue
        except Exception:
            pass
        deeper = _locate(child, path + suffix, name, depth + 1, budget, seen) if depth < _WALK_DEPTH else None
        return deeper or (path + suffix, child)
    return None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _explain(state: object, name: str, exc: BaseException) -> UnpicklableState:
    hint = " (install cloudpickle to checkpoint functions and classes by value)" if name == "pickle" else ""
    if isinstance(exc, RecursionError) or "recursion" in str(exc):  # every part would "fail"
        return UnpicklableState("cannot checkpoint state: it is nested too deeply to pickle")
    found = _locate(state, "state", name, 1, [_WALK_BUDGET], {id(state)})
    if found is None:
        return UnpicklableState(f"cannot checkpoint state: {_one_line(exc)}{hint}")
    return UnpicklableState(f"cannot checkpoint {found[0]}: objects of type "
                            f"{_typename(found[1])} cannot be pickled{hint}")


def dumps(state: object, *, task_id: str, epoch: int) -> list[bytes | memoryview]:
    """Pickle ``state`` into checkpoint pieces: the header, the pickle, then each buffer.

    Send or write the pieces in order; their concatenation is what ``loads`` reads. Large
    buffers are memoryviews of the state's own memory (no copy): leave the state alone
    until they are written. cloudpickle is tried first, then dill; when neither can pickle
    the state, ``UnpicklableState`` names the first attribute that fails and its type.
    """
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, not {epoch!r}")
    failure: tuple[str, BaseException] | None = None
    for name in _available():
        sink, buffers, kept = _Gather(), [], []
        try:
            _dump(name, state, sink, buffers, kept)
        except _Refused as exc:  # every pickler refuses these; no use trying the next
            failure = (name, exc)
            break
        except Exception as exc:
            failure = (name, exc)
            continue
        payload = sink.done()
        algorithm = _new_checksum()
        summed = body_sum(algorithm)
        for piece in (*payload, *buffers):
            summed.update(piece)
        v = sys.version_info
        header = CheckpointHeader(
            version=FORMAT_VERSION, python=f"{v.major}.{v.minor}.{v.micro}", task_id=task_id,
            epoch=int(epoch), created=time.time(), payload_size=sum(len(p) for p in payload),
            buffers=tuple(b.nbytes for b in buffers), checksum=f"{algorithm}:{summed.hexdigest()}",
            pickler=name, kept=tuple(kept))
        text = json.dumps(asdict(header), separators=(",", ":")).encode()
        return [MAGIC + _PREFIX.pack(FORMAT_VERSION, len(text), zlib.crc32(text)) + text,
                *payload, *buffers]
    assert failure is not None
    raise _explain(state, *failure) from failure[1]


def warm_up() -> None:
    """Import the pickler and the checksum now: a move's target does it before the task is
    frozen, not after."""
    importlib.import_module(_available()[0])
    body_sum(_new_checksum())


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
        ok = (header.version == version and header.pickler in _PICKLERS
              and all(type(n) is int and n >= 0 for n in (header.payload_size, header.epoch, *header.buffers))
              and all(type(i) is int and 0 <= i < len(header.buffers) for i in header.kept)
              and isinstance(header.task_id, str) and isinstance(header.checksum, str)
              and isinstance(header.python, str))
    except (ValueError, TypeError, AttributeError) as exc:
        raise CorruptCheckpoint(f"checkpoint header is unreadable ({_one_line(exc)})") from None
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


def _new_checksum() -> str:
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
    try:
        loader = importlib.import_module(header.pickler)
    except ImportError:
        raise IncompatibleCheckpoint(f"checkpoint was written with {header.pickler}, "
                                     "which is not installed here") from None
    payload, pos = view[pos:pos + header.payload_size], pos + header.payload_size
    out_of_band: list[memoryview | bytearray] = list(buffers) if buffers is not None else []
    for size in header.buffers if buffers is None else ():
        # numpy builds arrays on these buffers: read-only memory would give read-only arrays
        out_of_band.append(bytearray(view[pos:pos + size]) if view.readonly else view[pos:pos + size])
        pos += size
    module = loader if header.pickler == "dill" else pickle
    try:
        if not header.kept:
            return header, module.loads(payload, buffers=out_of_band)
        kept = set(header.kept)
        unpickler = module.Unpickler(io.BytesIO(payload),
                                     buffers=[b for i, b in enumerate(out_of_band) if i not in kept])

        def persistent_load(pid: object) -> bytearray:
            index = pid[1] if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "mosix-buffer" else -1
            if index not in kept:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            found = out_of_band[index]
            if type(found) is not bytearray:
                found = out_of_band[index] = bytearray(found)  # once: shared references stay shared
            return found

        unpickler.persistent_load = persistent_load
        return header, unpickler.load()
    except Exception as exc:
        raise CheckpointError(f"cannot restore task {header.task_id} epoch {header.epoch}: "
                              f"{_one_line(exc)}") from exc


def _fsync_dir(directory: Path) -> None:
    try:  # makes the rename durable; some platforms cannot open a directory, skip there
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dump_to_file(state: object, path: str | os.PathLike, *, task_id: str, epoch: int) -> int:
    """Write a checkpoint file atomically; returns its size in bytes.

    The state is pickled before the disk is touched, then written to a hidden temporary
    file beside ``path``, fsynced and renamed over it: readers see the old file or the
    new one, never a partial one. OSError from the file system propagates.
    """
    pieces = dumps(state, task_id=task_id, epoch=epoch)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600: states may hold secrets
    try:
        with open(fd, "wb", buffering=0) as f:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return sum(len(p) for p in pieces)


def load_from_file(path: str | os.PathLike) -> tuple[CheckpointHeader, object]:
    """Read and verify a checkpoint file, then unpickle it: ``(header, state)``."""
    with open(path, "rb", buffering=0) as f:
        data = bytearray(os.fstat(f.fileno()).st_size)  # writable: arrays restore in place
        view, got = memoryview(data), 0
        while got < len(data) and (n := f.readinto(view[got:])):
            got += n
    return loads(view[:got])


def _check_task_id(task_id: str) -> None:
    if not task_id or task_id.startswith(".") or any(c in task_id for c in "/\\\0"):
        raise ValueError(f"task id {task_id!r} cannot name a checkpoint file")


def checkpoint_path(directory: str | os.PathLike, task_id: str, epoch: int) -> Path:
    """Where epoch ``epoch`` of task ``task_id`` is kept: ``<dir>/<task>.<epoch:08d>.ckpt``."""
    _check_task_id(task_id)
    return Path(directory) / f"{task_id}.{epoch:08d}.ckpt"


def list_checkpoints(directory: str | os.PathLike, task_id: str) -> list[Path]:
    """The stored checkpoint files of a task, oldest epoch first."""
    _check_task_id(task_id)
    pattern = re.compile(re.escape(task_id) + r"\.(\d+)\.ckpt")
    directory = Path(directory)
    found = [(int(m.group(1)), entry) for entry in (directory.iterdir() if directory.is_dir() else ())
             if (m := pattern.fullmatch(entry.name))]
    return [entry for _, entry in sorted(found)]


def keep_last(directory: str | os.PathLike, task_id: str, n: int = 3) -> list[Path]:
    """Delete all but the ``n`` newest checkpoint files of a task; returns those deleted."""
    if n < 0:
        raise ValueError("n must be >= 0")
    files = list_checkpoints(directory, task_id)
    doomed = files[:max(len(files) - n, 0)]
    for old in doomed:
        old.unlink(missing_ok=True)
    return doomed
