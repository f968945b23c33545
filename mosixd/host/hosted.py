"""A task process this node runs for its home, as the host side keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mosixd.host.outpipe import OutputPipe
from mosixd.wire import mosix_pb2 as pb

EVENT_QUEUE = 16          # at most this many chunks buffered per task


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

    def signal(self, signum: int) -> None:
        # The task leads its own process group: a signal reaches its helpers too, as in a terminal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
