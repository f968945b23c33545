"""A task's stdin as its home and its node hold it: bounded ahead of the task, and kept at
home from the oldest byte a copy of the task may still need, so that a moved copy is sent its
stdin from the byte its checkpoint says, and nothing in flight at the move is lost."""

from __future__ import annotations

# mosrun sends stdin in 64 KiB chunks; a frame from it carries no larger payload than this.
MAX_CHUNK = 1 << 20
# mosrun keeps at most 1 MiB of stdin unacknowledged; a session that sends more than this
# ahead of the task is not mosrun's but a user's own program.
MAX_STDIN_AHEAD = 4 << 20
# Written into the task's pipe but perhaps not taken yet: the pipe (1 MiB) and the runtime's
# read-ahead, with room to spare. A copy restored after a move starts no further back.
KEEP_BEHIND = 4 << 20
# A task checkpointed at home (mosrun -A) may restart from its stored checkpoint: its stdin is
# kept from that checkpoint's offset on, up to this much.
MAX_HELD = 64 << 20


class StdinOverrun(Exception):
    """stdin sent further ahead of the task than the window allows."""


class StdinWindow:
    """stdin a session has sent that the task has not taken yet, bounded: more than
    ``limit`` bytes ahead is refused (a user's own program, not mosrun, sends that)."""

    def __init__(self, limit: int = MAX_STDIN_AHEAD) -> None:
        self.limit = limit
        self.ahead = 0

    def sent(self, size: int) -> None:
        """``size`` more bytes go to the task; StdinOverrun if that is too far ahead."""
        if self.ahead + size > self.limit:
            raise StdinOverrun(f"{self.ahead + size} bytes of stdin sent ahead of the task, "
                               f"over the limit of {self.limit}")
        self.ahead += size

    def acked(self, size: int) -> None:
        """The task's node wrote ``size`` bytes into its stdin."""
        self.ahead = max(0, self.ahead - size)


class StdinLog:
    """The home's record of one task's stdin, by stream offset.

    ``append`` what mosrun sends; ``acked`` what the current copy's node wrote into the
    task's pipe (it returns how much of that is new to mosrun, whose window it moves);
    ``resume(offset)`` when a copy restored from a checkpoint takes over: the bytes to send it.
    """

    def __init__(self, ahead: int = MAX_STDIN_AHEAD, keep: int = KEEP_BEHIND, held: int = MAX_HELD) -> None:
        self.ahead_limit, self.keep, self.max_held = ahead, keep, held
        self.pinned: int | None = None  # a stored checkpoint's offset: kept from there
        self.data = bytearray()
        self.base = 0        # the offset of data[0]
        self.copy_at = 0     # how far the current copy's pipe has been written
        self.delivered = 0   # the furthest any copy's pipe has been written (mosrun's acks)
        self.eof = False     # mosrun sent the end of its stdin

    @classmethod
    def starting_at(cls, offset: int) -> "StdinLog":
        """A log taken over by a restarted home: the task's pipe has had ``offset`` bytes."""
        log = cls()
        log.base = log.copy_at = log.delivered = offset
        return log

    @property
    def end(self) -> int:
        """The offset after the last byte mosrun sent."""
        return self.base + len(self.data)

    def append(self, chunk: bytes) -> None:
        """mosrun sent ``chunk``; StdinOverrun if that runs too far ahead of the task."""
        if self.end + len(chunk) - self.delivered > self.ahead_limit:
            raise StdinOverrun(f"{self.end + len(chunk) - self.delivered} bytes of stdin sent ahead of the "
                               f"task, over the limit of {self.ahead_limit}")
        self.data += chunk

    def acked(self, size: int) -> int:
        """The current copy's node wrote ``size`` more bytes into the pipe; returns the bytes
        mosrun has not been told of yet (a resumed copy first rewrites what others wrote)."""
        self.copy_at = min(self.end, self.copy_at + size)
        gained = max(0, self.copy_at - self.delivered)
        self.delivered += gained
        keep_from = self.copy_at - self.keep
        if self.pinned is not None:
            keep_from = max(min(keep_from, self.pinned), self.end - self.max_held)
        drop = keep_from - self.base
        if drop > 0:
            del self.data[:drop]
            self.base += drop
        return gained

    def resume(self, offset: int) -> tuple[bytes, int]:
        """A copy whose stdin starts at ``offset`` takes over: the bytes to send it from there,
        and how many bytes before those it needed but the home no longer holds (0 after a
        move; a restart from an older checkpoint may need more than ``keep``)."""
        start = min(max(offset, self.base), self.end)
        self.copy_at = start
        return bytes(self.data[start - self.base:]), max(0, self.base - offset)
