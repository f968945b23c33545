"""What the home side of tasks needs of the node it runs in: a narrow view, not the daemon.

The daemon builds one :class:`HomeNode` and hands it to the sessions, the mover and the
checkpoint keeper, so none of them imports the daemon (and tests can build one by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio

from mosixd.core.gossip import NodeView
from mosixd.core.policy import Placement


@dataclass(frozen=True)
class SessionLimits:
    """What one home takes from mosrun sessions (config ``[limits]``)."""

    sessions: int = 4096           # open at once, all users together
    per_user: int = 512            # open at once by one uid
    launch_timeout: float = 10.0   # seconds a new session has to send its launch request
    checkpoint_mb: int = 4096      # a checkpoint kept at home for mosrun -A, at most
    home_restart: float = 60.0     # after a restart, how long the home waits for its mosruns to come back

    def refusal(self, owners: Iterable[int], uid: int, what: str) -> str | None:
        """Why one more of ``what`` (sessions, tool connections) for ``uid`` is refused, given
        the uids of those open now, or None. One user's idle connections must not use up the
        daemon's descriptors for everyone."""
        owners = list(owners)
        if len(owners) >= self.sessions:
            return f"this node has {len(owners)} {what} open, its limit (limits.sessions)"
        mine = owners.count(uid)
        if mine >= self.per_user:
            return f"uid {uid} has {mine} {what} open, the limit per user (limits.sessions_per_user)"
        return None


@dataclass(frozen=True)
class HomeNode:
    """This node, as its tasks' home sees it."""

    node_id: str
    generation: int            # task ids carry it, so a restarted node never reuses one
    python: str                # this node's Python version: a Python task needs the same
    advertise_host: str        # the name or address peers reach this node by
    state_dir: Path            # checkpoints kept at home live under it
    placement: Placement       # the node's placement, shared with its other users
    now: Callable[[], float]                          # the node's monotonic clock
    cluster_view: Callable[[], list[NodeView]]        # the gossip view, this node first
    task_stream: Callable[[str], grpc.aio.StreamStreamCall]  # a new task stream (Host.Execute) to a peer
    limits: SessionLimits = field(default_factory=SessionLimits)

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``mosrun -A`` checkpoints are kept."""
        return self.state_dir / "checkpoints"
