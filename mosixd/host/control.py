"""A Python task's control socket: how the node and the task's runtime speak of moves.

The runtime says when the task becomes movable (it reached ``resumable()``), sends a
checkpoint kept at home through here or says that its checkpoint went straight to a move's
target, or why it could not freeze. The node asks for a freeze and gives the verdict after it
(go on, or end this copy). Frames are those of ``mosrun.runtime.frames``.
"""

from __future__ import annotations

import asyncio
import logging

from mosixd.host.hosted import HostedTask
from mosixd.wire import mosix_pb2 as pb
from mosrun.runtime import frames

log = logging.getLogger("mosixd.host.control")

CHUNK = 1 << 20           # a checkpoint kept at home goes home in pieces of this size


async def control_events(task: HostedTask, reader: asyncio.StreamReader,
                          events: asyncio.Queue[pb.HostEvent | None]) -> None:
    """What the task's runtime says about moving: movable, a checkpoint, or why not."""
    try:
        while (frame := await frames.read_frame(reader)) is not None:
            header = frame[0]
            if header["t"] == "movable":
                task.movable = True
                await events.put(pb.HostEvent(movable=True))
                if task.pending_freeze is not None and task.ctl_writer is not None:
                    task.ctl_writer.write(freeze_frame(task.pending_freeze))
                    task.pending_freeze = None
                    await task.ctl_writer.drain()
            elif header["t"] == "sent":  # a move's checkpoint, streamed straight to the target
                log.info("task %s: checkpoint of %d bytes handed over in %.3f s", task.spec.task_id,
                         int(header["size"]), float(header.get("seconds", 0.0)))
                await events.put(pb.HostEvent(sent=pb.Handover(
                    size=int(header["size"]), seconds=float(header.get("seconds", 0.0)),
                    precopy_bytes=int(header.get("precopy_bytes", 0)),
                    precopy_rounds=int(header.get("precopy_rounds", 0)),
                    stdin_offset=int(header.get("stdin", 0)), **output_offsets(task, "_offset"))))
            elif header["t"] == "freeze_failed":
                await events.put(pb.HostEvent(freeze_failed=str(header.get("reason", "unknown"))))
            elif header["t"] == "checkpoint":
                # Frozen and flushed: the output it has written is all in its pipes or gone home.
                await events.put(pb.HostEvent(written=pb.OutputOffsets(**output_offsets(task))))
                size = left = int(header["size"])
                while left:
                    chunk = await reader.readexactly(min(left, CHUNK))
                    left -= len(chunk)
                    await events.put(pb.HostEvent(checkpoint=chunk))
                await events.put(pb.HostEvent(frozen=size))
    except (frames.ProtocolError, ConnectionError, asyncio.IncompleteReadError, KeyError, ValueError) as exc:
        log.warning("task %s: broken control channel (%s)", task.spec.task_id, exc)


def output_offsets(task: HostedTask, suffix: str = "") -> dict[str, int]:
    """The stream offsets after what a frozen task has written to its stdout and stderr."""
    if len(task.outputs) != 2:
        return {}
    return {"stdout" + suffix: task.outputs[0].written(), "stderr" + suffix: task.outputs[1].written()}


async def ask_freeze(task: HostedTask, freeze: pb.Freeze) -> None:
    """Ask the task for a checkpoint: home, or straight to a move's target."""
    log.info("task %s: checkpoint %d asked%s", task.spec.task_id, freeze.id,
             f" for a move to {freeze.send_to}" if freeze.send_to else "")
    if task.ctl is None:
        await task.events.put(pb.HostEvent(freeze_failed="the task has no safe points (it is not a Python task)"))
    elif not task.movable or task.ctl_writer is None:
        # A restored copy announces itself once it reaches resumable(): hold the
        # request until then (the move's freeze deadline bounds the wait).
        task.pending_freeze = freeze
    else:
        task.ctl_writer.write(freeze_frame(freeze))
        await task.ctl_writer.drain()


async def give_verdict(task: HostedTask, verdict: pb.Verdict) -> None:
    """After a freeze: let the task go on, or end this copy (it runs elsewhere now)."""
    task.moved_away = task.moved_away or verdict.exit
    if task.ctl_writer is not None:
        word = "exit" if verdict.exit else "resume"
        task.ctl_writer.write(frames.encode({"t": word, "id": verdict.freeze}))
        await task.ctl_writer.drain()


def freeze_frame(freeze: pb.Freeze) -> bytes:
    """The control frame asking a runtime for a checkpoint: home, or straight to a target."""
    header: dict[str, object] = {"t": "freeze", "id": freeze.id}
    if freeze.send_to:
        header.update(to=freeze.send_to, token=freeze.token.hex(), precopy=freeze.precopy)
    return frames.encode(header)


async def control_word(task: HostedTask, timeout: float) -> dict[str, object]:
    """The next frame on a starting task's control socket, read exactly (the rest of the
    stream is the control reader's); {"t": "ended"} if it closed, or timed out."""
    assert task.ctl is not None
    loop = asyncio.get_running_loop()
    task.ctl.setblocking(False)

    async def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(task.ctl, n - len(data))  # type: ignore[arg-type]
            if not chunk:
                raise ConnectionResetError
            data += chunk
        return data

    try:
        async with asyncio.timeout(timeout):
            head_len, payload_len = frames.check_sizes(await exactly(frames.PREFIX.size))
            rest = await exactly(head_len + payload_len)
        return frames.decode_header(rest[:head_len])
    except (TimeoutError, ConnectionError, frames.ProtocolError) as exc:
        return {"t": "ended", "reason": "no answer" if isinstance(exc, TimeoutError) else "it ended"}
