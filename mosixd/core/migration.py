"""One move of a running task from its source node to a target node. Sans-IO.

A move is a small state machine. The daemon feeds it events (gRPC replies, the task
runtime's answers, failure-detector verdicts, clock ticks) with an explicit ``now`` and
carries out the actions each call returns; this module does no I/O and reads no clock.

    PLANNED --start--> RESERVING --target_reserved--> FREEZING --frozen(size)--+
                                                                               v
       DONE <--target_started-- STARTING <--last chunk acked-- TRANSFERRING <--+
                                                               (chunk_acked releases
                                                                more SendChunk)
    any failure before DONE: refused, freeze failed, target failed, peer lost,
    a deadline passed, abort() ---> ABORTED (ResumeSource, ReleaseTarget, Report)

What it guarantees:

* ``EndSourceCopy`` is returned once at most, and only by ``target_started`` after the
  whole checkpoint was acknowledged and ``StartOnTarget`` was sent. Until then the
  source copy is merely frozen, so every failure can hand the task back to it.
* Every abort returns ``ResumeSource`` (the task goes on where it was; if the freeze
  was still pending it is cancelled) and, once a reservation was asked for,
  ``ReleaseTarget``: the target may hold a reservation or a started copy whose
  confirmation never arrived, and releasing an unknown one is a no-op for it. Both
  are sent even if that node was reported lost: if the report was false, the task
  must neither stop nor run twice; if it was true, the call fails harmlessly.
* After ``target_started`` the task lives on the target: losing the source (or any
  later event) changes nothing.
* Events that do not fit the current state (late, duplicated, out of order, for an
  unsent chunk) are ignored and return no action.
* The checkpoint of N bytes goes as ``SendChunk`` of at most ``chunk_size`` bytes with
  at most ``window`` bytes unacknowledged; acknowledgements may come in any order. The
  adapter keeps the bytes, computes their checksum, and adds it to ``FinishTransfer``.

Stdio, signals and proxied files are the home node's business: ``NotifyHome`` tells it
where the task now runs, and it queues what arrives while the task is frozen.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MigrationState(str, enum.Enum):
    """Where a move stands; DONE and ABORTED are final."""

    PLANNED = "planned"
    RESERVING = "reserving"
    FREEZING = "freezing"
    TRANSFERRING = "transferring"
    STARTING = "starting"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """What to move where, why ("manual", "balance", "expel", "bring", ...), and limits.

    Timeouts are in seconds. ``transfer_timeout`` bounds the wait for the next
    acknowledgement, not the whole transfer, so a big checkpoint is not cut off while
    it is still moving.
    """

    task_id: str
    source: str
    target: str
    reason: str
    home: str | None = None  # None when the home node is not known to this machine
    chunk_size: int = 1 << 20
    window: int = 8 << 20  # most bytes sent and not yet acknowledged
    reserve_timeout: float = 20.0  # the target starts a warm interpreter before it answers
    freeze_timeout: float = 30.0  # the task must reach a safe point by then
    transfer_timeout: float = 10.0
    start_timeout: float = 30.0  # the warm interpreter takes the checkpoint and confirms

    def __post_init__(self) -> None:
        if self.source == self.target:
            raise ValueError(f"task {self.task_id} already runs on {self.target}")
        if self.chunk_size <= 0 or self.window <= 0:
            raise ValueError("chunk_size and window must be positive")


# --- actions the adapter carries out ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReserveTarget:
    """Ask the target to hold room for the task (it may refuse)."""
    plan: MigrationPlan


@dataclass(frozen=True, slots=True)
class RequestFreeze:
    """Ask the task to stop at its next safe point and produce its checkpoint."""
    task_id: str


@dataclass(frozen=True, slots=True)
class SendChunk:
    """Send bytes [offset, offset + size) of the checkpoint to the target."""
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FinishTransfer:
    """All ``total`` bytes are acknowledged; the adapter adds the checksum."""
    total: int


@dataclass(frozen=True, slots=True)
class StartOnTarget:
    """Tell the target to start the task from the checkpoint and confirm."""


@dataclass(frozen=True, slots=True)
class EndSourceCopy:
    """The target confirmed: end the frozen copy on the source."""


@dataclass(frozen=True, slots=True)
class ResumeSource:
    """Let the task go on where it was (cancelling a pending freeze)."""
    reason: str


@dataclass(frozen=True, slots=True)
class ReleaseTarget:
    """Drop the reservation and any copy the target may have started."""


@dataclass(frozen=True, slots=True)
class NotifyHome:
    """Tell the home node where the task runs now."""
    new_node: str


@dataclass(frozen=True, slots=True)
class Report:
    """The end of the move, in words for the user (``ok`` false: it stayed put)."""
    outcome: str
    ok: bool


Action = (ReserveTarget | RequestFreeze | SendChunk | FinishTransfer | StartOnTarget
          | EndSourceCopy | ResumeSource | ReleaseTarget | NotifyHome | Report)

_FINAL = (MigrationState.DONE, MigrationState.ABORTED)
# The states that wait for someone: the plan's timeout that bounds the wait, and how
# to tell the user it ran out.
_STEPS = {
    MigrationState.RESERVING: ("reserve_timeout", "target {target} did not answer"),
    MigrationState.FREEZING: ("freeze_timeout", "the task reached no safe point"),
    MigrationState.TRANSFERRING: ("transfer_timeout", "the transfer to {target} stalled"),
    MigrationState.STARTING: ("start_timeout", "target {target} did not confirm the start"),
}


class Migration:
    """The state machine of one move; every method returns the actions to carry out."""

    def __init__(self, plan: MigrationPlan, now: float) -> None:
        self.plan = plan
        self._state = MigrationState.PLANNED
        self._history: list[tuple[float, MigrationState]] = [(now, self._state)]
        self._clock = now  # last progress: state entry or, while transferring, an ack
        self._outcome = ""
        self._reserve_asked = False
        self._total = 0
        self._next = 0  # offset of the next chunk to send
        self._in_flight: dict[int, int] = {}  # offset -> size, sent and not acknowledged
        self._acked = 0
        self._frozen_at: float | None = None
        self._started_at: float | None = None

    # --- what the daemon shows -------------------------------------------------------

    @property
    def state(self) -> MigrationState:
        """The current state."""
        return self._state

    @property
    def finished(self) -> bool:
        """True once DONE or ABORTED: no event changes anything any more."""
        return self._state in _FINAL

    @property
    def outcome(self) -> str:
        """The words of the final Report; empty while the move is under way."""
        return self._outcome

    @property
    def history(self) -> tuple[tuple[float, MigrationState], ...]:
        """Every state entered, with the time it was entered, oldest first."""
        return tuple(self._history)

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes acknowledged, checkpoint size); (0, 0) before the freeze."""
        return self._acked, self._total

    @property
    def freeze_duration(self) -> float | None:
        """Seconds from the checkpoint being ready to the target's confirmation."""
        if self._frozen_at is None or self._started_at is None:
            return None
        return self._started_at - self._frozen_at

    @property
    def deadline(self) -> float | None:
        """When ``tick`` may next abort the move, so the adapter can set one timer."""
        limit = self._limit()
        return None if limit is None else self._clock + limit

    # --- events ----------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: ask the target for room."""
        if self._state is not MigrationState.PLANNED:
            return []
        self._reserve_asked = True
        self._enter(MigrationState.RESERVING, now)
        return [ReserveTarget(self.plan)]

    def target_reserved(self, now: float) -> list[Action]:
        """The target holds room: freeze the task at its next safe point."""
        if self._state is not MigrationState.RESERVING:
            return []
        self._enter(MigrationState.FREEZING, now)
        return [RequestFreeze(self.plan.task_id)]

    def target_refused(self, reason: str, now: float) -> list[Action]:
        """The target will not take the task (blocked, full, wrong Python...)."""
        if self._state is not MigrationState.RESERVING:
            return []
        return self._abort(f"target {self.plan.target} refused: {reason}", now)

    def frozen(self, checkpoint_size: int, now: float) -> list[Action]:
        """The task stopped at a safe point; its checkpoint is ``checkpoint_size`` bytes."""
        if checkpoint_size < 0:
            raise ValueError(f"checkpoint size {checkpoint_size} < 0")
        if self._state is not MigrationState.FREEZING:
            return []
        self._frozen_at = now
        self._total = checkpoint_size
        self._enter(MigrationState.TRANSFERRING, now)
        return self._pump(now)

    def freeze_failed(self, reason: str, now: float) -> list[Action]:
        """No checkpoint (e.g. unpicklable state); ``reason`` reaches the user as is."""
        if self._state is not MigrationState.FREEZING:
            return []
        return self._abort(reason, now)

    def chunk_acked(self, offset: int, size: int, now: float) -> list[Action]:
        """The target stored the chunk at ``offset``: more may go, or the transfer ends."""
        if (self._state is not MigrationState.TRANSFERRING
                or self._in_flight.get(offset) != size):
            return []  # duplicate, stale, or for a chunk never sent
        del self._in_flight[offset]
        self._acked += size
        self._clock = now  # progress: the stall deadline starts again
        return self._pump(now)

    def target_started(self, now: float) -> list[Action]:
        """The target runs the task: only now does the source copy end."""
        if self._state is not MigrationState.STARTING:
            return []  # before the whole checkpoint is there it cannot be true
        self._started_at = now
        self._outcome = (f"{self.plan.task_id} moved from {self.plan.source} "
                         f"to {self.plan.target}")
        self._enter(MigrationState.DONE, now)
        return [EndSourceCopy(), NotifyHome(self.plan.target), Report(self._outcome, True)]

    def target_failed(self, reason: str, now: float) -> list[Action]:
        """The target gave up (could not store or start the task)."""
        if self._state not in _STEPS:
            return []
        return self._abort(f"target {self.plan.target} failed: {reason}", now)

    def peer_lost(self, node: str, now: float) -> list[Action]:
        """The failure detector says ``node`` is down; matters only before DONE."""
        if self.finished:
            return []
        p = self.plan
        roles = [role for role, who in (("source", p.source), ("target", p.target),
                                        ("home", p.home)) if who == node]
        if not roles:
            return []
        return self._abort(f"{'/'.join(roles)} node {node} lost", now)

    def abort(self, reason: str, now: float) -> list[Action]:
        """Give up from outside (the task ended, the daemon stops, the user cancels)."""
        return [] if self.finished else self._abort(reason, now)

    def tick(self, now: float) -> list[Action]:
        """Abort if the current step has waited past its deadline."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        attr, what = _STEPS[self._state]
        why = what.format(target=self.plan.target)
        return self._abort(f"{why} within {getattr(self.plan, attr):g}s", now)

    # --- inside ----------------------------------------------------------------------

    def _limit(self) -> float | None:
        step = _STEPS.get(self._state)
        return None if step is None else getattr(self.plan, step[0])

    def _enter(self, state: MigrationState, now: float) -> None:
        self._state = state
        self._clock = now
        self._history.append((now, state))

    def _pump(self, now: float) -> list[Action]:
        # Fill the window; a chunk bigger than the window still goes alone, else the
        # transfer could never make progress.
        out: list[Action] = []
        while self._next < self._total:
            size = min(self.plan.chunk_size, self._total - self._next)
            # Bytes in flight are those sent (up to _next) and not yet acknowledged.
            if self._in_flight and self._next - self._acked + size > self.plan.window:
                break
            self._in_flight[self._next] = size
            out.append(SendChunk(self._next, size))
            self._next += size
        if self._acked == self._total:
            self._enter(MigrationState.STARTING, now)
            out += [FinishTransfer(self._total), StartOnTarget()]
        return out

    def _abort(self, why: str, now: float) -> list[Action]:
        self._outcome = f"{self.plan.task_id} stays on {self.plan.source}: {why}"
        self._enter(MigrationState.ABORTED, now)
        out: list[Action] = [ResumeSource(why)]
        if self._reserve_asked:
            out.append(ReleaseTarget())
        out.append(Report(self._outcome, False))
        return out
