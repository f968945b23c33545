"""Keeping a task safe at home: its checkpoints, and its restart when its node dies.

With ``mosrun -A SECONDS`` the home node checkpoints the task every so often and keeps the
newest few under its state directory; when the node running the task dies, it restarts the
task from the newest one on the best other node (a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mosixd.core.policy import JobRequest, NoRoom
from mosixd.home.context import HomeNode
from mosixd.home.livetask import CALL_ERRORS, LiveTask, exchange
from mosixd.wire import mosix_pb2 as pb
from mosixd.wire.tls import write_private
from mosrun.runtime import transfer
from mosrun.runtime.checkpoint import checkpoint_path, keep_last, list_checkpoints, read_header

log = logging.getLogger("mosixd.home.keeper")

FREEZE_TIMEOUT = 30.0     # a task that reaches no safe point in this long is not checkpointed
RESERVE_TIMEOUT = 20.0    # a target starts a warm interpreter before it answers
START_TIMEOUT = 30.0      # ... and has the checkpoint and runs it
KEEP_CHECKPOINTS = 3


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointTooLarge(Exception):
    """A task's checkpoint is bigger than this home keeps (limits.checkpoint_mb)."""


class CheckpointKeeper:
    """Stored checkpoints and failover of the tasks whose home is this node."""

    def __init__(self, node: HomeNode) -> None:
        self._node = node

    @property
    def checkpoint_dir(self) -> Path:
        return self._node.checkpoint_dir

    def clean_orphans(self, keep: set[str] = frozenset()) -> int:  # type: ignore[assignment]
        """At start: remove the checkpoints of an earlier life of this daemon, but those of the
        tasks in ``keep`` (which this life may take back). The others' sessions died with it."""
        mine = f"{self._node.node_id}.{self._node.generation}."
        removed = 0
        directory = self.checkpoint_dir
        for entry in directory.iterdir() if directory.is_dir() else ():
            name = entry.name.lstrip(".")
            if any(name.startswith(f"{task_id}.") for task_id in keep):
                continue
            if entry.name.endswith((".ckpt", ".tmp", ".json")) and not name.startswith(mine):
                entry.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d checkpoint file(s) of an earlier life of this node: their sessions are gone",
                     removed)
        return removed

    def forget(self, task_id: str) -> None:
        """A task ended: its checkpoints are of no more use."""
        for old in list_checkpoints(self.checkpoint_dir, task_id):
            old.unlink(missing_ok=True)
        self._offsets_path(task_id).unlink(missing_ok=True)

    def _offsets_path(self, task_id: str) -> Path:
        return self.checkpoint_dir / f"{task_id}.output.json"

    def _save_offsets(self, task_id: str, offsets: dict[str, tuple[int, int]]) -> None:
        """The output offsets of the stored checkpoints, on disk too: a restarted home that
        takes the task back still knows what a restart from them would print again."""
        write_private(self._offsets_path(task_id), json.dumps({name: list(at) for name, at in offsets.items()}).encode())

    def load_offsets(self, task_id: str) -> dict[str, tuple[int, int]]:
        """What ``_save_offsets`` kept ({} if nothing, or unreadable)."""
        try:
            raw = json.loads(self._offsets_path(task_id).read_text())
            return {str(name): (int(at[0]), int(at[1])) for name, at in raw.items()}
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return {}

    async def store_checkpoints(self, live: LiveTask, send: Any) -> None:
        """mosrun -A: every so often, checkpoint the task to this (home) node. ``send`` tells
        the user's mosrun (once) when a checkpoint cannot be kept."""
        told = False
        while True:
            await asyncio.sleep(live.spec.checkpoint_every)
            if not live.movable or live.freeze_lock.locked():
                continue
            async with live.freeze_lock:
                live.move_events = asyncio.Queue()
                try:
                    await self._store_one(live)
                except (OSError, CheckpointTooLarge) as exc:  # a full disk must not end the task
                    log.warning("task %s: checkpoint not stored: %s", live.spec.task_id, exc)
                    if not told:
                        told = True
                        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                        with contextlib.suppress(OSError):
                            await send({"t": "notice", "text": (
                                f"task {live.spec.task_id}: its checkpoint could not be kept at home ({why}); "
                                "it runs on, but cannot be restarted if its node is lost")})
                finally:
                    live.move_events = None

    async def _store_one(self, live: LiveTask) -> None:
        assert live.move_events is not None
        live.freezes += 1
        freeze_id, epoch = live.freezes, live.spec.epoch + live.freezes
        directory = self.checkpoint_dir
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = checkpoint_path(directory, live.spec.task_id, epoch)
        tmp = final.with_name(f".{final.name}.tmp")
        limit = self._node.limits.checkpoint_mb << 20
        written, output = 0, None
        await live.write(pb.HomeMessage(freeze=pb.Freeze(id=freeze_id)))
        try:
            # A checkpoint is the task's memory: the daemon's to read, nobody else's.
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
                while True:
                    event = await asyncio.wait_for(live.move_events.get(), FREEZE_TIMEOUT)
                    kind = event.WhichOneof("kind") if event is not None else None
                    if kind == "written":
                        output = (event.written.stdout, event.written.stderr)
                    elif kind == "checkpoint":
                        written += len(event.checkpoint)
                        if written > limit:
                            raise CheckpointTooLarge(f"it is over {limit >> 20} MiB (limits.checkpoint_mb)")
                        out.write(event.checkpoint)
                    elif kind == "frozen":
                        out.flush()
                        os.fsync(out.fileno())
                        break
                    else:
                        log.info("task %s: no checkpoint this time (%s)", live.spec.task_id,
                                 event.freeze_failed if kind == "freeze_failed" else "its node is gone")
                        return
            os.replace(tmp, final)
            _fsync_dir(directory)
            live.stdin.pinned = read_header(final).stdin  # a restart reads stdin on from there
            keep_last(directory, live.spec.task_id, KEEP_CHECKPOINTS)
            if output is not None:
                live.output_at[final.name] = output
            kept = {path.name for path in list_checkpoints(directory, live.spec.task_id)}
            live.output_at = {name: at for name, at in live.output_at.items() if name in kept}
            self._save_offsets(live.spec.task_id, live.output_at)
        except TimeoutError:
            log.warning("task %s: checkpoint timed out", live.spec.task_id)
        finally:
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(*CALL_ERRORS):
                await live.write_current(pb.HomeMessage(verdict=pb.Verdict(freeze=freeze_id, exit=False)))

    async def failover(self, live: LiveTask, send: Any, what: str = "was lost") -> bool:
        """The node running the task is gone (``what`` happened to it): restart the task elsewhere
        from its latest checkpoint."""
        files = list_checkpoints(self.checkpoint_dir, live.spec.task_id) if live.spec.checkpoint_every else []
        if not files:
            return False
        latest, dead = files[-1], live.node_id
        stored_at = time.strftime("%H:%M:%S", time.localtime(latest.stat().st_mtime))
        spec = pb.TaskSpec()
        spec.CopyFrom(live.spec)
        spec.epoch = int(latest.name.rsplit(".", 2)[-2]) + 1
        spec.incoming_bytes = latest.stat().st_size
        spec.stdin_origin = read_header(latest).stdin
        output = live.output_at.get(latest.name)
        if output is not None:  # the restored copy's output goes on from there
            spec.stdout_origin, spec.stderr_origin = output
        job = JobRequest(memory_mb=spec.memory_mb, python=spec.python_version)
        try:
            choices = self._node.placement.rank(self._node.cluster_view(), job, self._node.now(), exclude=[dead])
        except NoRoom:
            return False
        for choice in choices:
            call = self._node.task_stream(choice.address)
            answer = await exchange(call, pb.HomeMessage(reserve=spec), "reserved", RESERVE_TIMEOUT)
            why = answer if isinstance(answer, str) else None
            if not isinstance(answer, str):
                try:
                    await asyncio.to_thread(transfer.send_file, answer.reserved.checkpoint_to,
                                            answer.reserved.token, latest)
                except (transfer.TransferError, OSError) as exc:
                    why = str(exc)
            if why is None:
                answer = await exchange(call, pb.HomeMessage(start=spec), "started", START_TIMEOUT)
                why = answer if isinstance(answer, str) else None
            if why is not None:
                log.info("task %s: %s cannot take it over: %s", live.spec.task_id, choice.node_id, why)
                call.cancel()
                continue
            live.call.cancel()
            live.call, live.node_id, live.record.where = call, choice.node_id, choice.node_id
            live.stdin_resume = spec.stdin_origin  # the caller resends stdin from there
            live.output_origin = output  # and tells mosrun which output it has shown already
            live.spec.epoch = spec.epoch
            await send({"t": "notice", "text": f"node {dead} running task {live.spec.task_id} {what}; "
                                               f"restarted on {choice.node_id} from its checkpoint of {stored_at}"})
            log.info("task %s: restarted on %s from %s after %s was lost", live.spec.task_id, choice.node_id,
                     latest.name, dead)
            return True
        return False
