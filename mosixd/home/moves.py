"""Moving a running task: what its home node does when it is asked to move it.

``Mover.migrate`` drives one move with the sans-IO ``Migration`` state machine: reserve room
on the target (which starts a warm interpreter for the task), freeze the task at its next safe
point, let it stream its checkpoint straight to that interpreter (``mosrun.runtime.transfer``),
start it on the target, and only then end the old copy. Any failure before that leaves the
task running where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc.aio

from mosixd.core.gossip import NodeState
from mosixd.core.migration import (EndSourceCopy, Migration, MigrationPlan, ReleaseTarget, Report, RequestFreeze,
                                   ReserveTarget, ResumeSource, SendChunk, StartOnTarget)
from mosixd.core.policy import JobRequest, NoRoom
from mosixd.home.context import HomeNode
from mosixd.home.livetask import CALL_ERRORS, LiveTask, exchange
from mosixd.wire import mosix_pb2 as pb

# A Python task that started this recently may not have reached mosrun.resumable() yet: a
# move asked for then waits this long for it before saying the task cannot move.
FIRST_SAFEPOINT_GRACE = 10.0

log = logging.getLogger("mosixd.home.moves")


class NoTarget(Exception):
    """No node to move the task to; the message says why."""


class Mover:
    """Moves of the tasks whose home is this node."""

    def __init__(self, node: HomeNode, live: dict[str, LiveTask]) -> None:
        self._node = node
        self.live = live
        self.moves: dict[bool, int] = {True: 0, False: 0}  # moves driven, by success
        self.freeze_seconds = 0.0  # summed over the moves that succeeded

    async def migrate(self, task_id: str, target: str, uid: int) -> pb.MigrateReply:
        """Move one of this node's tasks to ``target`` (a node id, "home" or "balance")."""
        live = self.live.get(task_id)
        if live is None:
            return pb.MigrateReply(ok=False, message=f"no running task {task_id} has its home on {self._node.node_id}")
        if uid not in (0, live.spec.uid):
            return pb.MigrateReply(ok=False, message=f"only the owner of task {task_id} ({live.spec.user}) or root may move it")
        if not live.movable and live.spec.python and time.time() - live.spec.started < FIRST_SAFEPOINT_GRACE:
            # Just started: it may not have reached mosrun.resumable() yet. Wait a little
            # rather than tell a user who moves a task right after launching it that it cannot.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.became_movable.wait(), FIRST_SAFEPOINT_GRACE)
        if live.freeze_lock.locked():
            return pb.MigrateReply(ok=False, node=live.node_id,
                                   message=f"task {task_id} is already moving or being checkpointed")
        if not live.movable:
            return pb.MigrateReply(ok=False, node=live.node_id, message=(
                f"task {task_id} cannot move: it has no safe points (a Python task must call mosrun.resumable())"))
        try:
            target_id, address = self._move_target(live, target)
        except NoTarget as exc:
            return pb.MigrateReply(ok=False, node=live.node_id, message=str(exc))
        if target_id == live.node_id:
            return pb.MigrateReply(ok=True, node=live.node_id, message=f"task {task_id} already runs on {target_id}")
        async with live.freeze_lock:
            live.move_events = asyncio.Queue()
            try:
                return await self._move(live, target_id, address)
            finally:
                live.move_events = None

    def _move_target(self, live: LiveTask, target: str) -> tuple[str, str]:
        views = self._node.cluster_view()
        if target == "home":
            return views[0].id, views[0].address
        if target == "balance":
            job = JobRequest(memory_mb=live.spec.memory_mb, python=live.spec.python_version)
            try:
                best = self._node.placement.rank(views, job, self._node.now(), exclude=[live.node_id])[0]
            except NoRoom as exc:
                raise NoTarget(f"no other node can take task {live.spec.task_id} ({exc.reasons})") from None
            return best.node_id, best.address
        view = next((v for v in views if v.id == target or v.address == target), None)
        if view is None:
            raise NoTarget(f"unknown node {target!r} (known: {', '.join(v.id for v in views)})")
        if view.state is not NodeState.UP:
            raise NoTarget(f"node {view.id} is {view.state.value}")
        return view.id, view.address

    async def _move(self, live: LiveTask, target_id: str, address: str) -> pb.MigrateReply:
        """Drive one move with the Migration state machine; the task keeps running on any failure."""
        assert live.move_events is not None
        # A big state is pre-copied before the freeze: allow for it at a modest 4 MB/s.
        plan = MigrationPlan(task_id=live.spec.task_id, source=live.node_id, target=target_id,
                             reason="manual", home=self._node.node_id,
                             freeze_timeout=30.0 + live.record.rss / (4 << 20))
        machine = Migration(plan, self._node.now())
        spec = pb.TaskSpec()
        spec.CopyFrom(live.spec)
        spec.epoch += 1
        spec.incoming_bytes = live.record.rss  # the state is at most about the task's memory
        live.freezes += 1
        freeze_id = live.freezes
        new_call: grpc.aio.StreamStreamCall | None = None
        reservation = pb.Reservation()
        handover = pb.Handover()
        outcome, ok, frozen_asked = "", False, False
        pending = machine.start(self._node.now())
        while True:
            while pending:
                action = pending.pop(0)
                now = self._node.now()
                if isinstance(action, ReserveTarget):
                    new_call = self._node.task_stream(address)
                    answer = await exchange(new_call, pb.HomeMessage(reserve=spec), "reserved",
                                                  plan.reserve_timeout)
                    now = self._node.now()
                    if isinstance(answer, str):
                        pending += machine.target_refused(answer, now)
                    else:
                        reservation = answer.reserved
                        pending += machine.target_reserved(now)
                elif isinstance(action, RequestFreeze):
                    frozen_asked = True
                    try:
                        await live.write(pb.HomeMessage(freeze=pb.Freeze(
                            id=freeze_id, send_to=reservation.checkpoint_to, token=reservation.token,
                            precopy=True)))
                    except CALL_ERRORS:
                        pending += machine.abort(f"task {plan.task_id} ended before it could move", now)
                elif isinstance(action, SendChunk):
                    # The source streamed the whole checkpoint to the target and the target
                    # checked it before the source reported it frozen.
                    pending += machine.chunk_acked(action.offset, action.size, now)
                elif isinstance(action, StartOnTarget) and new_call is not None:
                    spec.stdout_origin, spec.stderr_origin = handover.stdout_offset, handover.stderr_offset
                    spec.stdin_origin = handover.stdin_offset
                    answer = await exchange(new_call, pb.HomeMessage(start=spec), "started", plan.start_timeout)
                    now = self._node.now()
                    pending += (machine.target_failed(answer, now) if isinstance(answer, str)
                                else machine.target_started(now))
                elif isinstance(action, EndSourceCopy) and new_call is not None:
                    live.switch_to = (new_call, target_id, spec.epoch)
                    live.stdin_resume = handover.stdin_offset
                    live.output_origin = (handover.stdout_offset, handover.stderr_offset)
                    await live.write(pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=True)))
                elif isinstance(action, ResumeSource) and frozen_asked:
                    with contextlib.suppress(*CALL_ERRORS):
                        await live.write_current(pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=False)))
                elif isinstance(action, ReleaseTarget) and new_call is not None and live.switch_to is None:
                    new_call.cancel()
                elif isinstance(action, Report):
                    outcome, ok = action.outcome, action.ok
            if machine.finished:
                break
            timeout = max(0.01, (machine.deadline or self._node.now() + 1.0) - self._node.now())
            try:
                event = await asyncio.wait_for(live.move_events.get(), timeout)
            except TimeoutError:
                pending += machine.tick(self._node.now())
                continue
            now = self._node.now()
            kind = event.WhichOneof("kind") if event is not None else None
            if kind is None:
                pending += machine.peer_lost(live.node_id, now)
            elif kind == "exited":
                pending += machine.abort(f"task {plan.task_id} ended before it could move", now)
            elif kind == "sent":  # streamed to the target and checked there
                handover = event.sent
                pending += machine.frozen(handover.size, now)
            elif kind == "freeze_failed":
                pending += machine.freeze_failed(event.freeze_failed, now)
        log.info("%s", outcome)
        # The task stood still while it streamed its checkpoint, then until the target confirmed.
        freeze = handover.seconds + (machine.freeze_duration or 0.0)
        self.moves[ok] += 1
        self.freeze_seconds += freeze if ok else 0.0
        return pb.MigrateReply(ok=ok, message=outcome, node=target_id if ok else live.node_id,
                               freeze_seconds=freeze,
                               state_bytes=handover.size, transfer_seconds=handover.seconds,
                               precopy_bytes=handover.precopy_bytes, precopy_rounds=handover.precopy_rounds)
