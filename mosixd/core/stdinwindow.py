"""How far a task's stdin may run ahead of the task: the bound that keeps a session from
making the home and the executing node hold unbounded memory."""

from __future__ import annotations

# mosrun sends stdin in 64 KiB chunks; a frame from it carries no larger payload than this.
MAX_CHUNK = 1 << 20
# mosrun keeps at most 1 MiB of stdin unacknowledged; a session that sends more than this
# ahead of the task is not mosrun's but a user's own program.
MAX_STDIN_AHEAD = 4 << 20


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
