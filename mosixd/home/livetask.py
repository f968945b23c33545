"""What the home node holds for each of its running tasks: the record mosps shows, and the
live state of the stream to wherever the task runs now."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import grpc.aio

from mosixd.core.stdinlog import StdinLog
from mosixd.wire import mosix_pb2 as pb

# A stream whose peer died fails with either, depending on when the failure is noticed.
CALL_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError)


@dataclass
class TaskRecord:
    """What the home node knows of one of its tasks (mosps)."""

    id: str
    user: str
    command: str
    started: float
    state: str = "starting"
    where: str = ""
    pid: int = 0
    cpu: float = 0.0
    rss: int = 0


@dataclass
class LiveTask:
    """A running task's session at home: which stream and node it is on now."""

    spec: pb.TaskSpec
    record: TaskRecord
    call: grpc.aio.StreamStreamCall
    node_id: str
    movable: bool = False
    became_movable: asyncio.Event = field(default_factory=asyncio.Event)  # set with movable
    # While a move is under way: what the source sends about it, and the stream to switch to
    # once the source copy has ended.
    move_events: asyncio.Queue[pb.HostEvent | None] | None = None
    switch_to: tuple[grpc.aio.StreamStreamCall, str, int] | None = None  # (stream, node, epoch)
    freezes: int = 0
    freeze_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one move or checkpoint at a time
    # Its stdin by offset; the lock orders what is written to a copy against a switch of copy.
    stdin: StdinLog = field(default_factory=StdinLog)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stdin_resume: int | None = None  # where the copy taking over reads on (its checkpoint says)
    # Where the copy taking over writes on (stdout, stderr offsets), for mosrun; and the
    # offsets each stored checkpoint (by file name) was taken at.
    output_origin: tuple[int, int] | None = None
    output_at: dict[str, tuple[int, int]] = field(default_factory=dict)
    reading: "asyncio.Future[object] | None" = None  # a read of the stream left under way

    # One write at a time on a task's streams: stdin, signals, freezes and verdicts come from
    # different coroutines, and a gRPC stream takes one write at a time.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, message: pb.HomeMessage) -> None:
        """Write to the task's current stream; after a move, to the copy that took over."""
        async with self.write_lock:
            call = self.call
            try:
                await call.write(message)
            except CALL_ERRORS:
                if self.switch_to is not None:
                    await self.switch_to[0].write(message)
                elif self.call is not call:
                    await self.call.write(message)
                else:
                    raise

    async def write_current(self, message: pb.HomeMessage) -> None:
        """Write to the current copy only (a verdict for it); errors are the caller's."""
        async with self.write_lock:
            await self.call.write(message)

    async def write_stdin(self, message: pb.HomeMessage) -> None:
        """stdin to the current copy only: what a copy on its way out misses is resent to
        the copy that takes over, from the offset its checkpoint gives."""
        async with self.write_lock:
            try:
                await self.call.write(message)
            except CALL_ERRORS:
                pass


async def exchange(call: grpc.aio.StreamStreamCall, message: pb.HomeMessage, expect: str,
                   timeout: float) -> pb.HostEvent | str:
    """Send one message on a task stream and wait for the answer: the event if it is
    ``expect``, else why not."""
    try:
        await call.write(message)
        event = await asyncio.wait_for(call.read(), timeout)
    except (*CALL_ERRORS, TimeoutError) as exc:
        return f"no answer ({type(exc).__name__})"
    kind = event.WhichOneof("kind") if event is not grpc.aio.EOF else None
    if kind == expect:
        return event
    return event.refused.reason if kind == "refused" else "closed the stream"
