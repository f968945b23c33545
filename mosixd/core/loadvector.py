"""LoadVector: what a node says about itself in gossip. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

#: Speed of the standard CPU; a node's ``speed`` is relative to it.
STANDARD_SPEED = 1.0


@dataclass(frozen=True, slots=True)
class LoadVector:
    """A node's load report.

    ``load`` is demand divided by capacity, where capacity is ``cpus * speed`` in standard
    CPUs: a one-CPU node of standard speed running one CPU-bound process has load 1.0.
    """

    load: float = 0.0
    cpus: int = 1
    speed: float = STANDARD_SPEED
    mem_total: int = 0
    mem_free: int = 0
    local_tasks: int = 0
    guest_tasks: int = 0
    python: str = ""

    @property
    def capacity(self) -> float:
        """Capacity in standard CPUs."""
        return self.cpus * self.speed

    @property
    def tasks(self) -> int:
        """All tasks running on the node, local and guest."""
        return self.local_tasks + self.guest_tasks
