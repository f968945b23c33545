"""The direct checkpoint stream of a move (mosrun.runtime.transfer), over real loopback sockets."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from mosrun.runtime import checkpoint as ck
from mosrun.runtime import transfer
from mosrun.runtime.task import ResumableState

TOKEN = os.urandom(transfer.TOKEN_SIZE)


class Receiver:
    """A target waiting for a checkpoint on a loopback port, on a thread."""

    def __init__(self, timeout: float = 10.0, room: bytearray | None = None) -> None:
        self.room = room
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.result: tuple[bytearray, list[bytearray]] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self.thread.start()

    def _run(self, timeout: float) -> None:
        try:
            self.result = transfer.receive(self.listener, TOKEN, timeout, self.room)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def state_with_buffer() -> ResumableState:
    return ResumableState(step=41, blob=bytearray(os.urandom(3 << 20)), words=["a", "b"])


def test_a_checkpoint_crosses_and_restores_its_big_buffer_in_place() -> None:
    state = state_with_buffer()
    receiver = Receiver()
    transfer.send(receiver.address, TOKEN, ck.dumps(state, task_id="t1", epoch=2))
    receiver.join()
    assert receiver.error is None and receiver.result is not None
    data, buffers = receiver.result
    header, back = ck.loads(data, buffers=buffers, checked=True)
    assert (header.task_id, header.epoch) == ("t1", 2)
    assert back.step == 41 and back.words == ["a", "b"] and back.blob == state.blob
    assert back.blob is buffers[0]  # received straight into the state's bytearray


@pytest.mark.parametrize("room_size", [3 << 20, 4 << 20, 64 << 20, 1 << 20, 0])
def test_the_largest_piece_lands_in_the_room_held_for_it(room_size: int) -> None:
    """Memory held ready becomes the biggest piece, cut or grown to its size, whatever the
    guess was; the state comes back whole."""
    state = state_with_buffer()
    room = bytearray(room_size)
    receiver = Receiver(room=room)
    transfer.send(receiver.address, TOKEN, ck.dumps(state, task_id="t1", epoch=2))
    receiver.join()
    assert receiver.error is None and receiver.result is not None
    data, buffers = receiver.result
    back = ck.loads(data, buffers=buffers, checked=True)[1]
    assert back.blob == state.blob and back.words == ["a", "b"]
    assert back.blob is room and len(room) == len(state.blob)


def test_a_connection_without_the_token_is_ignored() -> None:
    receiver = Receiver()
    host, port = receiver.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as stranger:
        stranger.sendall(os.urandom(transfer.TOKEN_SIZE) + b"garbage")
        try:
            answer = stranger.recv(10)
        except ConnectionResetError:  # closed with our garbage unread
            answer = b""
        assert answer == b""  # dropped without an answer
    transfer.send(receiver.address, TOKEN, ck.dumps(ResumableState(step=1), task_id="t", epoch=1))
    receiver.join()
    assert receiver.error is None and receiver.result is not None


def test_a_flood_of_silent_and_wrong_connections_does_not_keep_the_source_out() -> None:
    """Strays from the source's own address, idle or with a wrong token, before and while the
    source connects: the move still gets across (they used to make it fail after 8)."""
    receiver = Receiver()
    host, port = receiver.address.rsplit(":", 1)
    strays = []
    try:
        for i in range(3 * transfer.MAX_WAITING_PER_PEER):
            stray = socket.create_connection((host, int(port)))
            if i % 2:
                stray.sendall(os.urandom(transfer.TOKEN_SIZE))
            strays.append(stray)
        transfer.send(receiver.address, TOKEN, ck.dumps(ResumableState(step=7), task_id="t", epoch=1))
        receiver.join()
    finally:
        for stray in strays:
            stray.close()
    assert receiver.error is None and receiver.result is not None
    assert ck.loads(receiver.result[0], buffers=receiver.result[1], checked=True)[1].step == 7


def test_nothing_valid_within_the_timeout_is_one_line() -> None:
    receiver = Receiver(timeout=1.0)
    host, port = receiver.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))):  # silent until the end
        receiver.join()
    assert isinstance(receiver.error, transfer.TransferError)
    assert str(receiver.error) == "no checkpoint arrived within 1 s"


def test_a_damaged_checkpoint_is_refused_and_the_sender_told_why() -> None:
    pieces = [bytes(p) for p in ck.dumps(state_with_buffer(), task_id="t", epoch=1)]
    damaged = bytearray(pieces[-1])
    damaged[len(damaged) // 2] ^= 0xFF
    pieces[-1] = bytes(damaged)
    receiver = Receiver()
    with pytest.raises(transfer.TransferError, match="refused the checkpoint: .*checksum mismatch"):
        transfer.send(receiver.address, TOKEN, pieces)
    receiver.join()
    assert isinstance(receiver.error, ck.CorruptCheckpoint)


def test_a_stream_cut_short_is_an_error_not_a_half_loaded_state() -> None:
    data = b"".join(ck.dumps(state_with_buffer(), task_id="t", epoch=1))
    receiver = Receiver()
    host, port = receiver.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as source:
        source.sendall(TOKEN + data[: len(data) // 2])
    receiver.join()
    assert isinstance(receiver.error, transfer.TransferError)
    assert "ended early" in str(receiver.error)


def test_nothing_arriving_times_out() -> None:
    receiver = Receiver(timeout=0.3)
    receiver.join()
    assert isinstance(receiver.error, transfer.TransferError) and "no checkpoint arrived" in str(receiver.error)


def test_an_unreachable_target_is_one_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nobody listens there now
    with pytest.raises(transfer.TransferError, match=f"cannot reach the target at 127.0.0.1:{port}"):
        transfer.send(f"127.0.0.1:{port}", TOKEN, [b"x"], timeout=2)


def test_a_stored_checkpoint_file_is_sent_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "t.00000003.ckpt"
    ck.dump_to_file(state_with_buffer(), path, task_id="t", epoch=3)
    receiver = Receiver()
    transfer.send_file(receiver.address, TOKEN, path)
    receiver.join()
    assert receiver.result is not None
    assert ck.loads(receiver.result[0], buffers=receiver.result[1], checked=True)[1].step == 41


# ---- pre-copy: the state streams while the task runs, then only what changed --------------------

def precopy_move(state: ResumableState, between_rounds: Any = None,
                 change_before_freeze: Any = None) -> tuple[ResumableState, Any]:
    """Run a pre-copied move of ``state`` to a receiver, as the task's runtime does: note the
    buffers, stream them (``between_rounds`` runs while they go), then freeze and finish."""
    from mosrun.runtime import precopy
    from mosrun.runtime.checkpoint import pickling

    receiver = Receiver()
    buffers = [v.obj if type(v.obj) is bytearray else v for v in pickling.pickle_state(state).buffers]
    ready = threading.Event()
    pre = precopy.PreCopy(transfer.open_stream(receiver.address, TOKEN), buffers, ready.set)
    pre.start()
    if between_rounds is not None:
        between_rounds(state)
    assert ready.wait(30)
    if change_before_freeze is not None:
        change_before_freeze(state)
    pieces = ck.dumps(state, task_id="t", epoch=1)
    with pre.sock:
        pre.finish(pieces, len(pieces) - len(ck.read_header(pieces[0]).buffers))
        transfer.answer(pre.sock, receiver.address)
    receiver.join()
    assert receiver.error is None, receiver.error
    assert receiver.result is not None
    return ck.loads(receiver.result[0], buffers=receiver.result[1], checked=True)[1], pre


def test_a_precopied_state_arrives_whole_and_only_changes_go_at_the_freeze() -> None:
    from mosrun.runtime import precopy

    state = ResumableState(step=1, blob=bytearray(os.urandom(40 << 20)), small=list(range(10)))

    def touch(s: ResumableState) -> None:
        s.blob[5 << 20:(5 << 20) + 10] = b"x" * 10  # one chunk changed after the snapshot
        s.step = 2

    back, pre = precopy_move(state, change_before_freeze=touch)
    assert back.blob == state.blob and back.step == 2 and back.small == list(range(10))
    # Everything once while the task ran, and at the freeze the one chunk that changed.
    assert pre.rounds >= 1 and pre.bytes <= (40 << 20) + 2 * precopy.CHUNK


def test_a_buffer_that_changed_size_or_appeared_is_sent_whole() -> None:
    state = ResumableState(blob=bytearray(os.urandom(20 << 20)), other=None)

    def grow(s: ResumableState) -> None:
        s.blob += os.urandom(3 << 20)  # the task may resize a buffer while it streams
        s.other = bytearray(os.urandom(2 << 20))

    back, _ = precopy_move(state, change_before_freeze=grow)
    assert back.blob == state.blob and back.other == state.other and len(back.blob) == 23 << 20


def test_a_damaged_precopy_is_refused_before_anything_is_restored() -> None:
    from mosrun.runtime import precopy

    receiver = Receiver()
    sock = transfer.open_stream(receiver.address, TOKEN)
    with sock:
        sock.sendall(precopy.MAGIC + bytes([precopy.LAYOUT]) + (1).to_bytes(4, "big") + (1 << 20).to_bytes(8, "big"))
        sock.sendall(precopy.HEAD.pack(precopy.CHUNK_RECORD, 0, 1 << 20, 10))  # a chunk past the buffer's end
        with pytest.raises(transfer.TransferError, match="refused the checkpoint: a pre-copied chunk lies outside"):
            transfer.answer(sock, receiver.address)
    receiver.join()
    assert isinstance(receiver.error, ck.CorruptCheckpoint)
