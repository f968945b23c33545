"""What the user's mosrun sends to its home session, read ahead while the task waits.

While a task waits in the queue for a node, its mosrun stays connected: the session reads what
it sends, so that a signal (Ctrl-C) takes the task out of the queue at once and a mosrun that
went away is noticed, and keeps the stdin it sends for the task, which gets it first once it
runs. A read is never cut in the middle of a frame: the one under way carries over.
"""

from __future__ import annotations

import asyncio
import signal

from mosixd.core.stdinlog import MAX_CHUNK
from mosrun.runtime import frames

# Signals that mean "stop waiting" to a task that has not started; others are dropped then.
LEAVING_SIGNALS = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))


class SessionGone(Exception):
    """mosrun closed its session."""


class Interrupted(Exception):
    """mosrun passed on a signal that ends the wait; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Inbox:
    """The frames of one session with mosrun."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._held: list[frames.Frame] = []
        self._read: asyncio.Future[frames.Frame | None] | None = None

    async def wait(self, timeout: float, wake: asyncio.Event) -> None:
        """Read what mosrun sends for up to ``timeout`` seconds, or until ``wake`` is set.
        Raises SessionGone when mosrun has left, Interrupted for a signal that ends the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wake.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return
            if self._read is None:
                self._read = asyncio.ensure_future(frames.read_frame(self._reader, MAX_CHUNK))
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({self._read, woken}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if not self._read.done():
                continue
            frame, self._read = self._read.result(), None
            if frame is None:
                raise SessionGone
            if frame[0].get("t") == "signal":
                signum = int(frame[0].get("sig", 0))
                if signum in LEAVING_SIGNALS:
                    raise Interrupted(signum)
                continue  # there is no task yet to pass it on to
            self._held.append(frame)

    async def next(self) -> frames.Frame | None:
        """The next frame from mosrun: those held while waiting first. None: it has left."""
        if self._held:
            return self._held.pop(0)
        if self._read is not None:
            read, self._read = self._read, None
            return await read
        return await frames.read_frame(self._reader, MAX_CHUNK)

    def close(self) -> None:
        """Give up a read under way (the session ends)."""
        if self._read is not None:
            self._read.cancel()
            self._read = None
