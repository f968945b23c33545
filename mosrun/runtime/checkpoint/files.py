"""Checkpoint files: written atomically, named by task and epoch, the newest few kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mosrun.runtime.checkpoint.container import CheckpointHeader, dumps, loads


def _fsync_dir(directory: Path) -> None:
    try:  # makes the rename durable; some platforms cannot open a directory, skip there
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dump_to_file(state: object, path: str | os.PathLike, *, task_id: str, epoch: int) -> int:
    """Write a checkpoint file atomically; returns its size in bytes.

    The state is pickled before the disk is touched, then written to a hidden temporary
    file beside ``path``, fsynced and renamed over it: readers see the old file or the
    new one, never a partial one. OSError from the file system propagates.
    """
    pieces = dumps(state, task_id=task_id, epoch=epoch)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600: states may hold secrets
    try:
        with open(fd, "wb", buffering=0) as f:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return sum(len(p) for p in pieces)


def load_from_file(path: str | os.PathLike) -> tuple[CheckpointHeader, object]:
    """Read and verify a checkpoint file, then unpickle it: ``(header, state)``."""
    with open(path, "rb", buffering=0) as f:
        data = bytearray(os.fstat(f.fileno()).st_size)  # writable: arrays restore in place
        view, got = memoryview(data), 0
        while got < len(data) and (n := f.readinto(view[got:])):
            got += n
    return loads(view[:got])


def _check_task_id(task_id: str) -> None:
    if not task_id or task_id.startswith(".") or any(c in task_id for c in "/\\\0"):
        raise ValueError(f"task id {task_id!r} cannot name a checkpoint file")


def checkpoint_path(directory: str | os.PathLike, task_id: str, epoch: int) -> Path:
    """Where epoch ``epoch`` of task ``task_id`` is kept: ``<dir>/<task>.<epoch:08d>.ckpt``."""
    _check_task_id(task_id)
    return Path(directory) / f"{task_id}.{epoch:08d}.ckpt"


def list_checkpoints(directory: str | os.PathLike, task_id: str) -> list[Path]:
    """The stored checkpoint files of a task, oldest epoch first."""
    _check_task_id(task_id)
    directory = Path(directory)
    found = []
    for entry in directory.iterdir() if directory.is_dir() else ():
        # <task>.<epoch digits>.ckpt, by string: no pattern compiled (and cached) per task
        epoch = entry.name.removeprefix(task_id + ".").removesuffix(".ckpt")
        if entry.name == f"{task_id}.{epoch}.ckpt" and epoch.isdigit():
            found.append((int(epoch), entry))
    return [entry for _, entry in sorted(found)]


def keep_last(directory: str | os.PathLike, task_id: str, n: int = 3) -> list[Path]:
    """Delete all but the ``n`` newest checkpoint files of a task; returns those deleted."""
    if n < 0:
        raise ValueError("n must be >= 0")
    files = list_checkpoints(directory, task_id)
    doomed = files[:max(len(files) - n, 0)]
    for old in doomed:
        old.unlink(missing_ok=True)
    return doomed
