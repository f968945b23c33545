"""The checkpoint format: round trips, out-of-band buffers, refusals, corruption, files."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import types
import zlib
from pathlib import Path

import pytest

from mosrun.runtime import checkpoint as ck
from mosrun.runtime.checkpoint import CheckpointError, CorruptCheckpoint, IncompatibleCheckpoint, UnpicklableState, pickling

REPO = Path(__file__).resolve().parent.parent
SIDE_EFFECTS: list[str] = []


class State:
    """Stands in for the object ``resumable()`` returns."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


def _record(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


class Boom:
    """Unpickling this calls _record: proof of whether anything was unpickled."""

    def __reduce__(self) -> tuple:
        return (_record, ("unpickled",))


def blob(state: object, task_id: str = "t1", epoch: int = 7) -> bytes:
    return b"".join(ck.dumps(state, task_id=task_id, epoch=epoch))


def roundtrip(state: object) -> object:
    return ck.loads(blob(state))[1]


def rewrite_header(data: bytes, **changes: object) -> bytes:
    """The same checkpoint with header fields changed and a matching header CRC."""
    size = struct.unpack_from(">I", data, len(ck.MAGIC) + 2)[0]
    start = len(ck.MAGIC) + 10
    fields = json.loads(data[start:start + size]) | changes
    text = json.dumps(fields).encode()
    return (ck.MAGIC + struct.pack(">HII", ck.FORMAT_VERSION, len(text), zlib.crc32(text)) + text
            + data[start + size:])


# --- round trips ---------------------------------------------------------------------------

def test_plain_values_and_header() -> None:
    state = State(step=12, total=3.5, name="é", nothing=None, flag=True, raw=b"\x00\x01", big=2**100)
    header, back = ck.loads(blob(state, task_id="job-9", epoch=4))
    assert vars(back) == vars(state)
    assert (header.version, header.task_id, header.epoch) == (ck.FORMAT_VERSION, "job-9", 4)
    assert header.pickler == "cloudpickle" and header.checksum.startswith("xxh3:")
    assert header.python.split(".")[:2] == [str(sys.version_info.major), str(sys.version_info.minor)]


def test_nested_containers_keep_shape_and_sharing() -> None:
    shared = [1, 2]
    state = State(tree={"a": [(1, 2), {3, 4}, frozenset({5})], "b": {"c": shared, "d": shared}})
    back = roundtrip(state)
    assert back.tree == state.tree
    assert back.tree["b"]["c"] is back.tree["b"]["d"]


def test_lambda_and_closure() -> None:
    base = 10
    def add(x: int) -> int:
        return x + base
    back = roundtrip(State(f=lambda x: x * 3, g=add))
    assert back.f(2) == 6 and back.g(1) == 11


def test_main_classes_and_lambdas_travel_by_value(tmp_path: Path) -> None:
    pytest.importorskip("cloudpickle")
    writer = textwrap.dedent(f"""
        import sys
        from mosrun.runtime import checkpoint
        class Particle:
            def __init__(self, x): self.x = x
            def moved(self, dx): return Particle(self.x + dx)
        k = 5
        state = type("S", (), {{}})()
        state.p = Particle(2)
        state.scale = lambda v: v * k
        checkpoint.dump_to_file(state, {str(tmp_path / "c.ckpt")!r}, task_id="m", epoch=1)
    """)
    # A fresh interpreter without those definitions restores them from the checkpoint.
    reader = textwrap.dedent(f"""
        from mosrun.runtime import checkpoint
        header, state = checkpoint.load_from_file({str(tmp_path / "c.ckpt")!r})
        print(type(state.p).__name__, state.p.moved(3).x, state.scale(4), header.pickler)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for script in (writer, reader):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Particle", "5", "20", "cloudpickle"]


def test_large_bytearray_is_out_of_band_and_not_copied() -> None:
    big = bytearray(os.urandom(1024)) * (16 * 1024)  # 16 MiB
    state = State(big=big, again=big, small=bytearray(b"xy"), frozen=bytes(big[: 2 << 20]))
    tracemalloc.start()
    try:
        pieces = ck.dumps(state, task_id="t", epoch=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(big) // 16, f"dumps allocated {peak} bytes for a {len(big)}-byte buffer"
    assert any(isinstance(p, memoryview) and p.obj is big for p in pieces)
    for data in (b"".join(pieces), bytearray(b"".join(pieces))):
        back = ck.loads(data)[1]
        assert back.big == big and back.big is back.again and back.frozen == state.frozen
        back.big[0] ^= 1  # restored state is writable whatever the data was


def test_crc32_where_xxhash_is_missing_and_both_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node without xxhash writes CRC-32 checkpoints, which every node reads; an xxh3
    checkpoint there is refused with a line that says what is missing, never half-loaded."""
    state = State(blob=bytearray(os.urandom(2 << 20)), n=7)
    newer = bytearray(b"".join(ck.dumps(state, task_id="t", epoch=1)))
    monkeypatch.setitem(sys.modules, "xxhash", None)  # import xxhash now fails
    older = bytearray(b"".join(ck.dumps(state, task_id="t", epoch=1)))
    assert ck.read_header(older).checksum.startswith("crc32:")
    with pytest.raises(ck.CorruptCheckpoint, match="needs the xxhash package"):
        ck.loads(newer)
    monkeypatch.undo()
    for data in (older, newer):
        assert vars(ck.loads(data)[1]) == vars(state)
        data[-1] ^= 1
        with pytest.raises(ck.CorruptCheckpoint, match="checksum mismatch"):
            ck.loads(data)


def test_big_bytearrays_received_apart_are_restored_as_they_are() -> None:
    """A move's target reads each big buffer into its own bytearray: the state keeps those."""
    big = bytearray(os.urandom(2 << 20))
    state = State(big=big, again=big, numbers=list(range(100)))
    data = bytearray(b"".join(ck.dumps(state, task_id="t", epoch=1)))
    header = ck.read_header(data)
    assert header.kept == (0,) and header.buffers == (len(big),)
    cut = len(data) - len(big)
    received = [bytearray(data[cut:])]
    ck.check_sum(header, data[cut - header.payload_size:])
    back = ck.loads(data[:cut], buffers=received, checked=True)[1]
    assert back.big is received[0] and back.again is back.big and back.numbers == list(range(100))
    with pytest.raises(ck.CorruptCheckpoint):
        ck.loads(data[:cut], buffers=[bytearray(10)], checked=True)
    with pytest.raises(ValueError):
        ck.loads(data[:cut], buffers=received)  # apart, the checksum must have been checked


def test_numpy_arrays_out_of_band() -> None:
    np = pytest.importorskip("numpy")
    state = State(c=np.arange(1 << 19, dtype=np.float64), f=np.asfortranarray(np.ones((700, 300))),
                  tiny=np.arange(5), strided=np.arange(1 << 18)[::2])
    pieces = ck.dumps(state, task_id="t", epoch=1)
    assert any(isinstance(p, memoryview) and len(p) == state.c.nbytes for p in pieces)
    header, back = ck.loads(b"".join(pieces))  # read-only bytes: arrays must still be writable
    assert len(header.buffers) == 2
    for name in ("c", "f", "tiny", "strided"):
        assert np.array_equal(getattr(back, name), getattr(state, name))
    assert back.f.flags.f_contiguous
    back.c[0] = 42.0


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("make, typename", [
    (socket.socket, "socket.socket"),
    (threading.Lock, "threading.Lock"),
    (threading.RLock, "threading.RLock"),
    (lambda: open(__file__), "io.TextIOWrapper"),
    (lambda: open(__file__, "rb"), "io.BufferedReader"),
])
def test_unpicklable_named_with_path_and_type(make, typename: str) -> None:
    bad = make()
    try:
        with pytest.raises(UnpicklableState) as info:
            ck.dumps(State(step=1, conn=bad), task_id="t", epoch=1)
        expected = f"cannot checkpoint state.conn: objects of type {typename} cannot be pickled"
        assert str(info.value) == expected
    finally:
        if hasattr(bad, "close"):
            bad.close()


def test_unpicklable_deep_path() -> None:
    state = State(ok=[1, 2], config={"workers": [0, {"guard": threading.Lock()}]})
    where = r"state\.config\['workers'\]\[1\]\['guard'\]"
    message = rf"^cannot checkpoint {where}: objects of type threading\.Lock cannot be pickled$"
    with pytest.raises(UnpicklableState, match=message):
        ck.dumps(state, task_id="t", epoch=1)


def test_plain_pickle_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickling, "_available", lambda: ["pickle"])
    header, back = ck.loads(blob(State(x=[1, 2])))
    assert header.pickler == "pickle" and back.x == [1, 2]
    with pytest.raises(UnpicklableState, match=r"state\.f: objects of type function .*install cloudpickle"):
        ck.dumps(State(f=lambda: 1), task_id="t", epoch=1)


def test_dill_when_cloudpickle_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dill")
    real = pickling._dump
    def flaky(name, obj, sink, buffers, kept):
        if name == "cloudpickle":
            raise TypeError("cloudpickle cannot")
        return real(name, obj, sink, buffers, kept)
    monkeypatch.setattr(pickling, "_dump", flaky)
    header, back = ck.loads(blob(State(f=lambda v: v + 1)))
    assert header.pickler == "dill" and back.f(1) == 2


# --- corruption ----------------------------------------------------------------------------

def test_control_boom_does_run_when_intact() -> None:
    SIDE_EFFECTS.clear()
    ck.loads(blob(State(boom=Boom())))
    assert SIDE_EFFECTS == ["unpickled"]


def _corruptions(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data)
    flipped[-5] ^= 0x40
    in_header = bytearray(data)
    in_header[len(ck.MAGIC) + 14] ^= 0x01
    future = bytearray(data)
    struct.pack_into(">H", future, len(ck.MAGIC), ck.FORMAT_VERSION + 1)
    return {"flipped payload byte": bytes(flipped), "flipped header byte": bytes(in_header),
            "truncated": data[:-1], "truncated in header": data[:30], "empty": b"",
            "stray bytes": data + b"\0", "wrong magic": b"NOTMOSIX" + data[8:],
            "future version": bytes(future), "lying payload size": rewrite_header(data, payload_size=3),
            "bad header json": rewrite_header(data, epoch="x")}


@pytest.mark.parametrize("kind", ["flipped payload byte", "flipped header byte", "truncated",
                                  "truncated in header", "empty", "stray bytes", "wrong magic",
                                  "future version", "lying payload size", "bad header json"])
def test_corruption_refused_before_unpickling(kind: str) -> None:
    SIDE_EFFECTS.clear()
    data = blob(State(boom=Boom(), pad=bytearray(3 << 20)))
    with pytest.raises(CorruptCheckpoint) as info:
        ck.loads(_corruptions(data)[kind])
    assert SIDE_EFFECTS == [] and "\n" not in str(info.value)


def test_other_python_minor_refused() -> None:
    SIDE_EFFECTS.clear()
    data = rewrite_header(blob(State(boom=Boom())), python="3.99.1")
    with pytest.raises(IncompatibleCheckpoint, match="Python 3.99.1"):
        ck.loads(data)
    assert SIDE_EFFECTS == []
    v = sys.version_info
    ck.loads(rewrite_header(blob(State(x=1)), python=f"{v.major}.{v.minor}.999"))  # patch level may differ


def test_restore_failure_is_one_line_error() -> None:
    module = types.ModuleType("ck_vanishing")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules["ck_vanishing"] = module
    try:
        data = blob(State(t=module.Thing()))
    finally:
        del sys.modules["ck_vanishing"]
    with pytest.raises(CheckpointError, match=r"^cannot restore task t1 epoch 7: ModuleNotFoundError"):
        ck.loads(data)


def test_read_header_from_bytes_prefix_and_file(tmp_path: Path) -> None:
    data = blob(State(pad=bytearray(2 << 20)), task_id="h", epoch=3)
    header = ck.read_header(data[:400])
    assert (header.task_id, header.epoch, header.buffers) == ("h", 3, (2 << 20,))
    path = ck.checkpoint_path(tmp_path, "h", 3)
    path.write_bytes(data)
    assert ck.read_header(path) == ck.loads(data)[0]


# --- files ---------------------------------------------------------------------------------

def test_dump_to_file_atomic_and_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.checkpoint_path(tmp_path, "t", 1)
    size = ck.dump_to_file(State(step=1), path, task_id="t", epoch=1)
    assert size == path.stat().st_size and ck.load_from_file(path)[1].step == 1
    before = path.read_bytes()
    with pytest.raises(UnpicklableState):  # fails to pickle: the disk is never touched
        ck.dump_to_file(State(step=2, lock=threading.Lock()), path, task_id="t", epoch=1)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):  # fails while writing: the old file stays, no temporary is left
        ck.dump_to_file(State(step=3), path, task_id="t", epoch=1)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_keep_last(tmp_path: Path) -> None:
    for epoch in (3, 1, 99_999_999, 100_000_000, 2):
        path = ck.checkpoint_path(tmp_path, "job.1", epoch)
        ck.dump_to_file(State(e=epoch), path, task_id="job.1", epoch=epoch)
    ck.dump_to_file(State(), ck.checkpoint_path(tmp_path, "job.10", 1), task_id="job.10", epoch=1)
    (tmp_path / "job.1.notes").write_text("not a checkpoint")
    removed = ck.keep_last(tmp_path, "job.1", n=2)
    assert [p.name for p in removed] == [f"job.1.0000000{e}.ckpt" for e in (1, 2, 3)]
    kept = ck.list_checkpoints(tmp_path, "job.1")
    assert [ck.read_header(p).epoch for p in kept] == [99_999_999, 100_000_000]
    assert sorted(os.listdir(tmp_path)) == ["job.1.100000000.ckpt",
                                            "job.1.99999999.ckpt", "job.1.notes", "job.10.00000001.ckpt"]
    assert ck.keep_last(tmp_path, "job.1", n=5) == []
    with pytest.raises(ValueError):
        ck.checkpoint_path(tmp_path, "../evil", 1)
    with pytest.raises(ValueError):
        ck.dumps(State(), task_id="t", epoch=-1)


def test_too_deep_is_not_blamed_on_one_attribute() -> None:
    head = None
    for _ in range(100_000):
        head = State(next=head)
    with pytest.raises(UnpicklableState, match="^cannot checkpoint state: it is nested too deeply"):
        ck.dumps(State(head=head), task_id="t", epoch=1)
