"""A task's stdout or stderr: a pipe, as with a local run, that the kernel splices home.

The task writes to an ordinary pipe, so ``/dev/stdout``, ``/dev/stderr`` and everything else
a program may do with its output behave as they do locally. This daemon moves the bytes from
the pipe into the task's TCP stream to its home's mosrun with ``splice(2)``: page references,
no copy through this process. When the home reads slowly the stream fills, the splice waits,
the pipe fills, and the task blocks in ``write``, as it would on a slow terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import struct
import termios

PIPE_SIZE = 1 << 20     # bigger pipes: fewer, larger writes and splices
SPLICE_MAX = 1 << 20


def big_pipe() -> tuple[int, int]:
    """``os.pipe()`` with room for :data:`PIPE_SIZE` bytes where the kernel allows it."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):  # Linux only; the default still works
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


class OutputPipe:
    """One output pipe of a task and its stream home; give ``child_end`` to the task."""

    def __init__(self, stream: socket.socket) -> None:
        self._stream = stream
        self._read, self.child_end = big_pipe()
        os.set_blocking(self._read, False)
        stream.setblocking(False)
        self._job: asyncio.Task[None] | None = None
        self._open = True
        self.origin = 0  # the stream offset this copy's output starts at (a restored copy)
        self._moved = 0

    def start(self) -> None:
        """Start moving bytes (once the task holds its end; ours is closed by the caller)."""
        self._job = asyncio.get_running_loop().create_task(self._move())

    async def drained(self, timeout: float) -> None:
        """Wait until the task's writers have all closed the pipe and everything went home;
        at most ``timeout`` seconds (an orphan may keep the pipe open)."""
        if self._job is not None:
            await asyncio.wait({self._job}, timeout=timeout)

    def written(self) -> int:
        """The stream offset after what the task has written so far, all copies together:
        what went home, and what waits in the pipe (exact while the task is frozen)."""
        waiting = 0
        if self._open:
            with contextlib.suppress(OSError):
                waiting = struct.unpack("i", fcntl.ioctl(self._read, termios.FIONREAD, b"\0\0\0\0"))[0]
        return self.origin + self._moved + waiting

    def close(self) -> None:
        """Stop, and close our ends (mosrun then sees the stream end)."""
        if self._job is not None:
            self._job.cancel()
        self._release()

    def _release(self) -> None:
        if self._open:  # once: a closed fd number may already belong to something else
            self._open = False
            os.close(self._read)
            self._stream.close()

    async def _move(self) -> None:
        loop = asyncio.get_running_loop()
        out = self._stream.fileno()
        try:
            while True:
                try:
                    n = os.splice(self._read, out, SPLICE_MAX, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    # Either the pipe is empty or the stream is full: wait for the right one.
                    if select.select([self._read], [], [], 0)[0]:
                        await _ready(loop, out, writable=True)
                    else:
                        await _ready(loop, self._read, writable=False)
                    continue
                if n == 0:
                    break  # every writer closed the pipe: the task and its children are done
                self._moved += n
        except (BrokenPipeError, ConnectionResetError):
            pass  # mosrun went away; the task's writes now fail as on a closed terminal
        finally:
            self._release()


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, writable: bool) -> None:
    waiter = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    add(fd, waiter.set_result, None)
    try:
        await waiter
    finally:
        remove(fd)
