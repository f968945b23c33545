"""``resumable()`` and ``safepoint()``: what makes a Python task movable.

Under plain python, ``resumable(**initial)`` returns fresh state and ``safepoint()`` does
nothing. Under mosrun's runtime the node running the task may ask, at any moment, for a
checkpoint: the task stops at its next ``safepoint()``, its resumable state is pickled
(``mosrun.runtime.checkpoint``) and sent, and then either it goes on (the move was refused or failed)
or this copy ends because the task now runs on another node.

After a move the script starts again from the top on the new node. Until ``resumable()``
returns the restored state, its output is discarded: that part of the run was already shown.
So output that should appear once belongs before ``resumable()`` or after the state it depends on.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mosrun.runtime.precopy import PreCopy

_pending = 0                     # set by the control thread: the id of the freeze asked for
_send_to: tuple[str, bytes] | None = None   # with it: where a move's target waits, and its token
_precopy_wanted = False          # with it: send the state while the task runs first (a big move)
_precopy: "PreCopy | None" = None  # the pre-copy under way, once the task has noted its buffers
_restored: tuple[bytearray, list[bytearray]] | None = None  # a move's checkpoint, received early
_state: "ResumableState | None" = None
_control: "_Control | None" = None
_replay: tuple[int, int] | None = None   # saved stdout/stderr fds while a restored run replays


class ResumableState:
    """The task's resumable state: plain attributes, set from ``resumable(**initial)``."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"ResumableState({fields})"


def resumable(**initial: object) -> ResumableState:
    """The task's resumable state: ``initial`` on a first run, the saved state after a move."""
    global _state, _restored
    if _state is not None:
        return _state
    if _restored is not None:
        from mosrun.runtime import checkpoint, stdin

        (data, buffers), _restored = _restored, None
        try:
            header, _state = checkpoint.loads(data, buffers=buffers, checked=True)
            if not isinstance(_state, ResumableState):
                raise checkpoint.CheckpointError("the checkpoint does not hold a task state")
            stdin.resume_at(header.stdin)  # the home sends this copy its stdin from there
        except BaseException:
            end_replay()  # the user must see why the restored task failed
            raise
    else:
        _state = ResumableState(**initial)
    end_replay()
    fd = os.environ.pop("MOSIX_CONTROL_FD", "")
    if fd:
        global _control
        _control = _Control(int(fd))
    return _state


ROOM_MIN = 1 << 20  # below this, fresh pages cost less than holding them ready


def await_checkpoint(timeout: float = 600.0) -> None:
    """A move's target, before the program runs: get ready, take the checkpoint, run on the word.

    The node started this interpreter while the task still runs on its source. Tell the node
    we are ready, receive the checkpoint on the listening socket it handed over (the frozen
    source streams it here directly) into memory held ready for it, and wait for the word to
    start: only then has the move succeeded. A checkpoint that fails its checks is refused
    and this copy ends, so the task goes on at its source.
    """
    global _restored
    import socket

    from mosrun.runtime import checkpoint, frames, transfer

    begin_replay()  # a restored run's prefix was already shown before the move
    listener = socket.socket(fileno=int(os.environ.pop("MOSIX_RESTORE_FD")))
    token = bytes.fromhex(os.environ.pop("MOSIX_RESTORE_TOKEN", ""))
    ctl = socket.socket(fileno=int(os.environ["MOSIX_CONTROL_FD"]))
    try:
        checkpoint.warm_up()
        # The room for the state: zero-filled, so its pages are faulted in now, not during the freeze.
        size = int(os.environ.pop("MOSIX_RESTORE_ROOM", "0") or 0)
        room = bytearray(size) if size >= ROOM_MIN else None
        frames.send_frame(ctl, {"t": "ready"})
        try:
            _restored = transfer.receive(listener, token, timeout, room)
        except (transfer.TransferError, checkpoint.CheckpointError) as exc:
            frames.send_frame(ctl, {"t": "restore_failed", "reason": str(exc)})
            os._exit(1)
        finally:
            listener.close()
        frame = frames.recv_frame(ctl)
        if frame is None or frame[0].get("t") != "go":
            os._exit(1)  # the move was called off
        frames.send_frame(ctl, {"t": "restored"})
    finally:
        ctl.detach()  # resumable() takes the control channel over


def safepoint() -> None:
    """A point where the task may be checkpointed and moved; a flag test when nothing is pending."""
    if _pending:
        _freeze()


def begin_replay() -> None:
    """Discard output until ``resumable()`` returns (a restored run re-running its prefix)."""
    global _replay
    if _replay is not None:
        return
    _flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    _replay = (os.dup(1), os.dup(2))
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def end_replay() -> None:
    global _replay
    if _replay is None:
        return
    _flush()
    for fd, saved in zip((1, 2), _replay):
        os.dup2(saved, fd)
        os.close(saved)
    _replay = None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _freeze() -> None:
    global _pending, _precopy
    freeze, _pending = _pending, 0
    assert _control is not None and _state is not None
    if _send_to is not None and _precopy_wanted and _precopy is None and _start_precopy(freeze):
        return  # the task goes on while its state streams; the pre-copy asks for the freeze again
    stopped = time.monotonic()
    _flush()  # everything printed so far reaches home before the checkpoint does
    from mosrun.runtime import checkpoint, proxy, stdin

    if proxy.chan is not None:
        proxy.chan.settle()  # file writes still in flight reach home before this copy may end

    send_to = _send_to
    try:
        taken = stdin.taken()
        pieces = checkpoint.dumps(_state, task_id=os.environ.get("MOSIX_TASK_ID", ""),
                                  epoch=int(os.environ.get("MOSIX_EPOCH", "0") or 0) + 1, stdin=taken)
    except checkpoint.CheckpointError as exc:
        _control.send({"t": "freeze_failed", "id": freeze, "reason": str(exc)})
        return  # the task goes on where it is
    size = sum(len(p) for p in pieces)
    if send_to is None:  # a checkpoint kept at home: through the node, on the task's stream
        _control.send({"t": "checkpoint", "id": freeze, "size": size}, pieces)
    else:  # a move: straight to the target
        from mosrun.runtime import transfer

        pre, _precopy = _precopy, None
        try:
            if pre is None:
                transfer.send(*send_to, pieces)
            else:  # only what changed since the pre-copy
                with pre.sock:
                    pre.finish(pieces, len(pieces) - len(checkpoint.read_header(pieces[0]).buffers))
                    transfer.answer(pre.sock, send_to[0])
        except (transfer.TransferError, OSError) as exc:
            _control.send({"t": "freeze_failed", "id": freeze, "reason": str(exc)})
            return
        _control.send({"t": "sent", "id": freeze, "size": size, "seconds": time.monotonic() - stopped, "stdin": taken,
                       "precopy_bytes": pre.bytes if pre else 0, "precopy_rounds": pre.rounds if pre else 0})
    if _control.verdict(freeze) == "exit":
        _flush()
        os._exit(0)  # this copy is done: the task goes on elsewhere, with its atexit handlers


def _start_precopy(freeze: int) -> bool:
    """At a safe point of a big move: note the state's big buffers and start streaming them to
    the target while the task goes on (True); False when a plain freeze will do (a small state,
    or one the final freeze will refuse with its reason)."""
    global _precopy
    from mosrun.runtime import precopy, transfer
    from mosrun.runtime.checkpoint import CheckpointError, pickling

    assert _control is not None and _send_to is not None
    try:
        views = pickling.pickle_state(_state).buffers
    except CheckpointError:
        return False
    # Bytearrays are held as themselves, not as views: the task may resize them meanwhile.
    buffers = [v.obj if type(v.obj) is bytearray and v.nbytes == len(v.obj) else v for v in views]
    if precopy.PreCopy.total(buffers) < precopy.MIN_BYTES:
        return False
    try:
        sock = transfer.open_stream(*_send_to)
    except transfer.TransferError as exc:
        _control.send({"t": "freeze_failed", "id": freeze, "reason": str(exc)})
        return True

    def ready() -> None:
        global _pending
        _pending = freeze  # freeze at the next safe point: what is left to send is small

    _precopy = precopy.PreCopy(sock, buffers, ready)
    _precopy.start()
    return True


def _prepare() -> None:
    """Load what a checkpoint needs while the task still runs, not once it is stopped."""
    try:
        from mosrun.runtime import checkpoint, transfer  # noqa: F401

        checkpoint.warm_up()
    except Exception:
        pass  # the freeze itself reports what is wrong


class _Control:
    """The channel on which the node asks for checkpoints (a thread waits on it)."""

    def __init__(self, fd: int) -> None:
        # Imported here: a task that never calls resumable() should not pay for them at start.
        import queue
        import socket
        import threading

        from mosrun.runtime import frames

        self._frames = frames
        self._sock = socket.socket(fileno=fd)
        self._verdicts: queue.Queue[tuple[str, int]] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._listen, name="mosix-control", daemon=True).start()
        self.send({"t": "movable"})

    def send(self, header: dict[str, object], pieces: list[bytes | memoryview] | None = None) -> None:
        with self._lock:
            self._frames.send_frame(self._sock, header)
            for piece in pieces or ():
                self._sock.sendall(piece)

    def verdict(self, freeze: int) -> str:
        """Wait for the node's word on this freeze (a stale word for another one is dropped)."""
        while True:
            kind, about = self._verdicts.get()
            if about == freeze:
                return kind

    def _listen(self) -> None:
        global _pending, _send_to, _precopy_wanted
        while True:
            try:
                frame = self._frames.recv_frame(self._sock)
            except (OSError, self._frames.ProtocolError):
                frame = None
            if frame is None:
                return
            kind, about = frame[0]["t"], int(frame[0].get("id", 0))
            if kind == "freeze":
                _prepare()
                to = frame[0].get("to")
                _send_to = (str(to), bytes.fromhex(str(frame[0].get("token", "")))) if to else None
                _precopy_wanted = bool(frame[0].get("precopy"))
                _pending = about
            elif kind in ("resume", "exit"):
                self._verdicts.put((kind, about))
