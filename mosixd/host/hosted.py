"""A task process this node runs for its home, as the host side keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from mosixd.core.stdinlog import StdinWindow
from mosixd.host.outpipe import OutputPipe
from mosixd.wire import mosix_pb2 as pb

EVENT_QUEUE = 16          # at most this many chunks buffered per task


class Attachment:
    """One stream from the task's home: what it sends (``requests``), how to answer
    (``send``), and ``released``, set once the task is done with it (its handler returns)."""

    def __init__(self, requests: AsyncIterator[pb.HomeMessage], send: Callable[[pb.HostEvent], Awaitable[None]]) -> None:
        self.requests, self.send = requests, send
        self.released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        if not self.released.done():
            self.released.set_result(None)


class SpawnError(Exception):
    """The task could not be started here; ``retry`` says another node may do better."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class HostedTask:
    """A task process running on this node; its stdin pipe is ours to write."""

    spec: pb.TaskSpec
    pid: int
    stdin: asyncio.StreamWriter
    exited: asyncio.Future[int]
    scratch: Path
    local: bool
    ctl: socket.socket | None = None         # our end of its control socket (checkpoints)
    outputs: list[OutputPipe] = field(default_factory=list)  # its stdout and stderr, spliced home
    ctl_writer: asyncio.StreamWriter | None = None
    movable: bool = False                    # it called resumable(): it has safe points
    pending_freeze: pb.Freeze | None = None  # a freeze asked for before it was movable
    events: asyncio.Queue[pb.HostEvent | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EVENT_QUEUE))  # what goes home
    started: float = field(default_factory=time.time)
    arrived: float = field(default_factory=time.monotonic)   # for minimum residency
    cpu: float = 0.0
    rss: int = 0
    # Streams from its home, the first and, after a home restarts, the next (see TaskTable._run).
    attachments: asyncio.Queue[Attachment] = field(default_factory=asyncio.Queue)
    stdin_written: int = 0   # stream offset after the stdin handed to its pipe, all copies together
    stdin_closed: bool = False
    moved_away: bool = False  # its home said this copy ends: the task runs elsewhere now
    stdin_queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    stdin_window: "StdinWindow | None" = None  # the current stream's bound on stdin ahead

    def signal(self, signum: int) -> None:
        # The task leads its own process group: a signal reaches its helpers too, as in a terminal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
