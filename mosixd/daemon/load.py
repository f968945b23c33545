"""Load sampling for the node daemon: demand sources, smoothing, speed calibration.

Load is CPU demand (runnable processes) over capacity (``cpus * speed`` in standard
CPUs), smoothed the MOSIX way: it rises slowly, so a short burst does not make a node
look busy, and drops at once, so freed capacity is advertised immediately.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import psutil

from mosixd.core.loadvector import LoadVector

# Reference for calibrate_speed(): seconds one benchmark round takes on the standard
# CPU (speed 1.0). Measured as the best round on a current x86-64 server core
# (AMD EPYC, CPython 3.11: about 6.0 ms) and rounded, so such a core scores about 1.0.
REFERENCE_ROUND_SECONDS = 0.006
_ROUND_ITERATIONS = 40_000


class LoadSmoother:
    """MOSIX-style smoothing: rises slowly, drops at once. Sans-IO (caller passes now).

    Upward, the value closes ``1 - exp(-dt / rise_time)`` of the gap to the sample, so
    irregular sampling intervals give the same curve as regular ones. Downward, it
    takes the sample as is. The first sample is taken as is: there is no history yet.
    """

    def __init__(self, rise_time: float = 4.0) -> None:
        """``rise_time``: seconds to close about 63% of an upward gap."""
        if rise_time <= 0:
            raise ValueError("rise_time must be positive")
        self.rise_time = rise_time
        self._value = 0.0
        self._last: float | None = None

    def update(self, sample: float, now: float) -> float:
        """Feed one sample taken at time ``now`` (seconds); return the smoothed value."""
        if self._last is None or sample <= self._value:
            self._value = sample
        else:
            # A clock that stands still or steps back adds nothing to the rise.
            dt = max(0.0, now - self._last)
            self._value += (sample - self._value) * (1.0 - math.exp(-dt / self.rise_time))
        if self._last is None or now > self._last:
            self._last = now
        return self._value

    @property
    def value(self) -> float:
        """The current smoothed value (0.0 before the first sample)."""
        return self._value


def _benchmark_round(n: int) -> int:
    # Plain interpreter work a typical CPU-bound Python job does: integer arithmetic,
    # dict stores, list appends, a builtin call. No C-level shortcuts to skew it.
    acc = 0
    table: dict[int, int] = {}
    items: list[int] = []
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
        table[i & 255] = acc
        if i & 15 == 0:
            items.append(acc % 97)
    return acc + len(table) + sum(items)


def calibrate_speed(duration: float = 0.15) -> float:
    """Speed of this machine relative to the standard CPU (1.0).

    Runs a short pure-Python benchmark round repeatedly for about ``duration`` seconds
    (at least a few rounds) and scores the best one against ``REFERENCE_ROUND_SECONDS``.
    Best-of filters out time lost to other processes and to warm-up.
    """
    best = math.inf
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        _benchmark_round(_ROUND_ITERATIONS)
        best = min(best, time.perf_counter() - t0)
        rounds += 1
    return REFERENCE_ROUND_SECONDS / max(best, 1e-9)


class LoadSource(Protocol):
    """Where CPU demand comes from."""

    def demand(self) -> float:
        """Current run-queue demand in processes (not yet normalised)."""
        ...


class HostLoadSource:
    """Runnable processes on the whole host (the default for a real node).

    On Linux: the instantaneous running/runnable count from ``/proc/loadavg`` (4th
    field, ``running/total``) minus the reader itself, which is running as it reads.
    Not the kernel's 1-minute average: that lags by a minute, counts tasks blocked on
    disk, and the smoother already damps the noise. Elsewhere (no such file) it falls
    back to ``psutil.getloadavg()[0]``, the 1-minute average (emulated on Windows).
    """

    def __init__(self, path: str = "/proc/loadavg") -> None:
        self._path = path

    def demand(self) -> float:
        """Runnable processes on the host, excluding the caller."""
        try:
            with open(self._path, encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
            return float(max(0, running - 1))
        except (OSError, ValueError, IndexError):
            return float(psutil.getloadavg()[0])


class TaskLoadSource:
    """CPU demand of this node's own task processes (for nodes sharing a host).

    Each task process and each of its descendants (a task may spawn helpers) counts
    ``max(1 if running/runnable else 0, CPU fraction used since the last call)``: the
    status catches a process that just started running, the CPU fraction one that runs
    in bursts or with several threads. Vanished or inaccessible processes count 0.
    """

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        """``pids``: returns the pids of the node's task processes (the roots)."""
        self._pids = pids
        # cpu_percent() measures since the previous call on the same Process object,
        # so the objects must live across calls.
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self, roots: set[int]) -> set[int]:
        # One scan of the process table per call, however many roots there are.
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid is not None:
                children.setdefault(ppid, []).append(proc.pid)
        seen: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo.extend(children.get(pid, ()))
        return seen

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        # is_running() also detects a pid reused by a new process.
        if proc is None or not proc.is_running():
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def demand(self) -> float:
        """Summed demand of the task processes and their descendants."""
        roots = {pid for pid in self._pids() if pid > 0}
        pids = self._tree(roots) if roots else set()
        total = 0.0
        for pid in pids:
            try:
                proc = self._process(pid)
                with proc.oneshot():
                    runnable = 1.0 if proc.status() == psutil.STATUS_RUNNING else 0.0
                    total += max(runnable, proc.cpu_percent(interval=None) / 100.0)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._procs.pop(pid, None)
        for pid in self._procs.keys() - pids:  # forget processes that left the tree
            del self._procs[pid]
        return total


class LoadSampler:
    """Turns a LoadSource into this node's LoadVector."""

    def __init__(
        self,
        source: LoadSource,
        *,
        cpus: int,
        speed: float,
        smoother: LoadSmoother | None = None,
        task_counts: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        """``task_counts`` returns (local tasks, guest tasks) running on this node."""
        if cpus < 1 or not speed > 0:
            raise ValueError("cpus must be >= 1 and speed > 0")
        self.source = source
        self.cpus = cpus
        self.speed = speed
        self.smoother = smoother if smoother is not None else LoadSmoother()
        self._task_counts = task_counts
        self._python = platform.python_version()

    def sample(self, now: float) -> LoadVector:
        """Read demand, smooth it and normalise it by ``cpus * speed``; add memory
        (total and available), task counts and the Python version."""
        smoothed = self.smoother.update(self.source.demand(), now)
        mem = psutil.virtual_memory()
        local, guest = self._task_counts()
        return LoadVector(
            load=smoothed / (self.cpus * self.speed),
            cpus=self.cpus,
            speed=self.speed,
            mem_total=int(mem.total),
            mem_free=int(mem.available),
            local_tasks=local,
            guest_tasks=guest,
            python=self._python,
        )


def detect_cpus() -> int:
    """CPUs this process may use: its affinity mask where the OS has one, else the count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, psutil.cpu_count() or os.cpu_count() or 1)
