"""Pickling a task's resumable state, and saying exactly what cannot be pickled.

cloudpickle is tried first, then dill, then the standard pickle where neither is installed.
Protocol 5: large buffers of the state (numpy arrays, big bytes and bytearrays) are handed back
as views of the state's own memory, never copied, and a big bytearray is restored as the very
bytearray a receiver read it into. What must never be carried to another node (a lock, an OS
file) is refused by every pickler. When the state cannot be pickled, the error names the
attribute that fails and its type. The picklers are imported when first used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import pickle
import sys
from dataclasses import dataclass

from mosrun.runtime.checkpoint.errors import CheckpointError, IncompatibleCheckpoint, UnpicklableState

BIG = 1 << 20  # from this size a buffer is its own piece; below, copying is cheaper than a piece
PICKLERS = ("cloudpickle", "dill", "pickle")
_WALK_DEPTH, _WALK_BUDGET = 8, 2000  # bound the search for the attribute that fails


@dataclass(frozen=True, slots=True)
class PickledState:
    """A pickled state: the pickle in pieces, then the out-of-band buffers in order."""

    pickler: str                           # "cloudpickle" | "dill" | "pickle"
    payload: list[bytes | memoryview]
    buffers: list[memoryview]
    kept: list[int]                        # which buffers are big bytearrays, restored as is


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


def _home_file(obj: object) -> tuple[object, tuple[object, ...]] | None:
    """A file open on the home node (a raw, buffered or text file over the runtime's
    HomeFileIO), as what reopens it after a move: same path, mode and position. Its buffered
    writes are flushed home first. None for any other file."""
    homefile = sys.modules.get("mosrun.runtime.homefile")
    if homefile is None:
        return None
    text = obj if isinstance(obj, io.TextIOWrapper) else None
    buffered = text.buffer if text is not None else obj
    raw = getattr(buffered, "raw", buffered)
    if not isinstance(raw, homefile.HomeFileIO) or raw.closed or not raw._path or raw._fd is not None:
        return None
    try:
        obj.flush()  # type: ignore[attr-defined]
        pos = obj.tell() if raw.seekable() else None  # type: ignore[attr-defined]
    except OSError as exc:  # e.g. a text file in the middle of "for line in f"
        raise TypeError(f"home file {raw.name!r} cannot be checkpointed here ({exc})") from None
    mode = text.mode if text is not None else raw.mode
    from mosrun.runtime import fileopen

    return fileopen.reopen, (raw._path, raw.name, mode, pos, buffered is not raw,
                             getattr(text, "encoding", None), getattr(text, "errors", None),
                             bool(getattr(text, "line_buffering", False)))


class _Refusing:
    """Pickler mixin: refuse what must never be carried to another node; files open on the
    home node are carried as what reopens them there."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, _refused_types()) or type(obj).__name__ == "HomeFileIO":
            reduced = _home_file(obj)
            if reduced is not None:
                return reduced
            raise _Refused(obj)
        parent = getattr(super(), "reducer_override", None)
        return parent(obj) if parent is not None else NotImplemented


@functools.lru_cache(maxsize=None)
def _pickler_class(name: str) -> type:
    base = pickle.Pickler if name == "pickle" else importlib.import_module(name).Pickler
    return type(f"_{name}Pickler", (_Refusing, base), {})


def _available() -> list[str]:
    """Picklers to try, best first; the standard pickle only when neither extra is installed."""
    return [name for name in PICKLERS[:2] if importlib.util.find_spec(name)] or ["pickle"]


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
        if view.nbytes >= BIG and type(data) in (bytes, bytearray):
            self.pieces += [bytes(self.small), view] if self.small else [view]
            self.small = bytearray()
        else:
            self.small += view
        return view.nbytes

    def done(self) -> list[bytes | memoryview]:
        return self.pieces + [bytes(self.small)] if self.small else self.pieces


def _holds_big_bytearray(obj: object, budget: int = _WALK_BUDGET) -> bool:
    """Whether a short walk of ``obj`` finds a bytearray of at least ``BIG`` bytes."""
    todo, seen = [obj], {id(obj)}
    while todo and budget > 0:
        item = todo.pop()
        if type(item) is bytearray:
            if len(item) >= BIG:
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
        if view.nbytes < BIG:
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
            if type(item) is bytearray and len(item) >= BIG:
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


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _explain(state: object, name: str, exc: BaseException) -> UnpicklableState:
    hint = " (install cloudpickle to checkpoint functions and classes by value)" if name == "pickle" else ""
    if isinstance(exc, RecursionError) or "recursion" in str(exc):  # every part would "fail"
        return UnpicklableState("cannot checkpoint state: it is nested too deeply to pickle")
    found = _locate(state, "state", name, 1, [_WALK_BUDGET], {id(state)})
    if found is None:
        return UnpicklableState(f"cannot checkpoint state: {one_line(exc)}{hint}")
    return UnpicklableState(f"cannot checkpoint {found[0]}: objects of type "
                            f"{_typename(found[1])} cannot be pickled{hint}")



def pickle_state(state: object) -> PickledState:
    """Pickle ``state`` with the best pickler that can; ``UnpicklableState`` names the first
    attribute that fails and its type when none can."""
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
        return PickledState(name, sink.done(), buffers, kept)
    assert failure is not None
    raise _explain(state, *failure) from failure[1]


def warm_up() -> None:
    """Import the pickler now, not when the task is frozen."""
    importlib.import_module(_available()[0])


def unpickle(pickler: str, payload: memoryview, out_of_band: list[memoryview | bytearray],
             kept: tuple[int, ...], what: str) -> object:
    """The state back from its pickle and buffers; ``what`` names it in errors."""
    try:
        loader = importlib.import_module(pickler)
    except ImportError:
        raise IncompatibleCheckpoint(f"checkpoint was written with {pickler}, "
                                     "which is not installed here") from None
    module = loader if pickler == "dill" else pickle
    try:
        if not kept:
            return module.loads(payload, buffers=out_of_band)
        index = set(kept)
        unpickler = module.Unpickler(io.BytesIO(payload),
                                     buffers=[b for i, b in enumerate(out_of_band) if i not in index])

        def persistent_load(pid: object) -> bytearray:
            at = pid[1] if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "mosix-buffer" else -1
            if at not in index:
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            found = out_of_band[at]
            if type(found) is not bytearray:
                found = out_of_band[at] = bytearray(found)  # once: shared references stay shared
            return found

        unpickler.persistent_load = persistent_load
        return unpickler.load()
    except Exception as exc:
        raise CheckpointError(f"cannot restore {what}: {one_line(exc)}") from exc
