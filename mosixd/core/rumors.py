"""Membership news: what a rumor says, which rumor wins, and how often one is retold. Sans-IO.

A rumor says that a node, in one life (``generation``) and one ``incarnation`` of it, is
alive, suspect, dead or has left. Rumors about the same node are ordered by (generation,
incarnation, status): a new life beats anything said of an old one; within a life only the
node itself raises its incarnation, which it does to refute a suspicion or a death, so
``alive`` at a higher incarnation beats ``suspect``/``dead`` at a lower one; at the same
incarnation the graver status wins (SWIM's rules, with ``left`` as the gravest, since only
the node itself says it).

A node retells each rumor a bounded number of times, fewest-told first, a few per message,
and only the newest rumor about a given node: the queue never holds more than one rumor per
member, so its size is bounded by the cluster, and most of the time it is empty.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Status(enum.IntEnum):
    """A member's status in one incarnation; the value is its rank when incarnations tie."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Rumor:
    """One piece of membership news about ``node_id``."""

    node_id: str
    address: str  # where that node was reachable when the rumor was made
    generation: int
    incarnation: int
    status: Status

    def key(self) -> tuple[int, int, int]:
        """The order of news about one node: the larger key wins."""
        return (self.generation, self.incarnation, self.status)


def retransmit_limit(members: int, multiplier: float) -> int:
    """How many times a node retells a rumor: ``multiplier × log2(members + 1)``, rounded up.

    An epidemic reaches all of N members with high probability when every informed member
    keeps telling for O(log N) messages (SWIM, section 4.1).
    """
    return max(1, math.ceil(multiplier * math.log2(members + 1)))


class _Telling:
    """A rumor being retold, and how many times it was told."""

    __slots__ = ("rumor", "times")

    def __init__(self, rumor: Rumor) -> None:
        self.rumor = rumor
        self.times = 0


def _times(telling: _Telling) -> int:
    return telling.times


class RumorQueue:
    """Rumors this node still retells, at most one per member, each until told ``limit`` times."""

    def __init__(self) -> None:
        self._told: dict[str, _Telling] = {}  # node id -> the rumor retold about it

    def __len__(self) -> int:
        return len(self._told)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._told

    def add(self, rumor: Rumor) -> None:
        """Start retelling ``rumor``; it replaces any older rumor about the same node."""
        self._told[rumor.node_id] = _Telling(rumor)

    def peek(self, node_id: str) -> Rumor | None:
        """The rumor being retold about ``node_id``, if any."""
        telling = self._told.get(node_id)
        return None if telling is None else telling.rumor

    def take(self, count: int, limit: int) -> list[Rumor]:
        """Up to ``count`` rumors for one message, the least told first; each is counted as
        told once more, and one told ``limit`` times is dropped."""
        told = self._told
        if not told or count <= 0:
            return []
        chosen = list(told.values())
        if len(chosen) > count:
            chosen = sorted(chosen, key=_times)[:count]
        for telling in chosen:
            telling.times += 1
            if telling.times >= limit:
                del told[telling.rumor.node_id]
        return [telling.rumor for telling in chosen]
