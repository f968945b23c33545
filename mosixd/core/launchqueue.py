"""The order in which one home starts the tasks that wait for a node (``mosrun -q``).

Each user's tasks wait in order of arrival, and users take turns: the queue serves the oldest
task of the user whose turn it is, and that user then goes to the back of the line. So one user
with a hundred tasks in the queue does not keep another's single task waiting behind them all.
The head of the queue starts first; the rest wait for it, so a big task is not overtaken for
ever by small ones. Homes keep queues of their own and try every second, so they take turns at
the nodes' free room too. A plain class: the home session drives it.
"""

from __future__ import annotations

from collections import deque


class LaunchQueue:
    """Tasks waiting for a node: per user in order of arrival, users in turn."""

    def __init__(self) -> None:
        self._tasks: dict[str, deque[str]] = {}   # user -> their waiting tasks, oldest first
        self._turns: deque[str] = deque()          # users with waiting tasks, whose turn comes first
        self._owner: dict[str, str] = {}           # task -> its user

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._owner

    def join(self, task_id: str, user: str) -> None:
        """``task_id`` of ``user`` starts waiting (at the end of the user's line)."""
        if task_id in self._owner:
            return
        self._owner[task_id] = user
        if user not in self._tasks:
            self._tasks[user] = deque()
            self._turns.append(user)
        self._tasks[user].append(task_id)

    def leave(self, task_id: str, started: bool = False) -> None:
        """``task_id`` waits no more: it started (its user's turn is then over), or its user
        gave up."""
        user = self._owner.pop(task_id, None)
        if user is None:
            return
        self._tasks[user].remove(task_id)
        first = self._turns[0] == user
        if not self._tasks[user]:
            del self._tasks[user]
            self._turns.remove(user)
        elif started and first:
            self._turns.rotate(-1)  # the next user's turn

    def order(self) -> list[str]:
        """Every waiting task, in the order they will start."""
        lines = [list(self._tasks[user]) for user in self._turns]
        out: list[str] = []
        for depth in range(max((len(line) for line in lines), default=0)):
            out += [line[depth] for line in lines if depth < len(line)]
        return out

    def head(self) -> str | None:
        """The task that starts next."""
        return self._tasks[self._turns[0]][0] if self._turns else None

    def position(self, task_id: str) -> int:
        """1 for the head of the queue; 0 for a task that is not waiting."""
        if task_id not in self._owner:
            return 0
        return self.order().index(task_id) + 1
