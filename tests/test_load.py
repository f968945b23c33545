"""Tests for mosixd.daemon.load: smoothing, calibration, demand sources and the sampler."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from mosixd.core.loadvector import LoadVector
from mosixd.daemon.load import (
    HostLoadSource,
    LoadSampler,
    LoadSmoother,
    TaskLoadSource,
    calibrate_speed,
    detect_cpus,
)

BUSY = "import sys; print('ready', flush=True)\nwhile True: pass"
SLEEPY = "import sys, time; print('ready', flush=True); time.sleep(30)"
# The child sleeps; its own child (the grandchild) spins.
PARENT_OF_BUSY = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


# ---------------------------------------------------------------- LoadSmoother


def test_smoother_rises_slowly() -> None:
    s = LoadSmoother(rise_time=4.0)
    assert s.update(0.0, 0.0) == 0.0
    first = s.update(1.0, 1.0)
    assert 0.0 < first < 0.5
    t = 1.0
    for _ in range(40):  # 20 s = 5 rise times in 0.5 s steps
        t += 0.5
        s.update(1.0, t)
    assert s.value > 0.99
    assert s.value <= 1.0


def test_smoother_drops_at_once() -> None:
    s = LoadSmoother(rise_time=4.0)
    s.update(0.0, 0.0)
    for i in range(1, 60):
        s.update(2.0, float(i))
    assert s.value > 1.9
    assert s.update(0.5, 60.0) == 0.5
    assert s.value == 0.5


def test_smoother_first_sample_taken_as_is() -> None:
    assert LoadSmoother().update(3.0, 100.0) == 3.0


def test_smoother_irregular_intervals_match_one_long_interval() -> None:
    irregular = LoadSmoother(rise_time=2.0)
    irregular.update(0.0, 0.0)
    t = 0.0
    for dt in (0.1, 0.7, 0.05, 1.3, 0.25, 0.6):
        t += dt
        irregular.update(1.0, t)
    single = LoadSmoother(rise_time=2.0)
    single.update(0.0, 0.0)
    single.update(1.0, t)
    expected = 1.0 - math.exp(-t / 2.0)
    assert irregular.value == pytest.approx(expected, rel=1e-9)
    assert single.value == pytest.approx(expected, rel=1e-9)


def test_smoother_clock_standing_still_or_stepping_back_adds_nothing() -> None:
    s = LoadSmoother(rise_time=1.0)
    s.update(0.0, 10.0)
    assert s.update(1.0, 10.0) == 0.0
    assert s.update(1.0, 5.0) == 0.0
    # The rise resumes from the latest time seen, not from the step back.
    assert s.update(1.0, 11.0) == pytest.approx(1.0 - math.exp(-1.0))


def test_smoother_rejects_bad_rise_time() -> None:
    with pytest.raises(ValueError):
        LoadSmoother(rise_time=0.0)


# ------------------------------------------------------------- calibrate_speed


def test_calibrate_speed_is_sane_and_roughly_stable() -> None:
    t0 = time.perf_counter()
    a = calibrate_speed(0.1)
    elapsed = time.perf_counter() - t0
    b = calibrate_speed(0.1)
    for speed in (a, b):
        assert math.isfinite(speed)
        assert 0.01 < speed < 100
    assert max(a, b) / min(a, b) < 10
    assert elapsed < 5


# ------------------------------------------------------------ real processes


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start Python children in their own process group; kill the groups afterwards."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        children.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    try:
        yield start
    finally:
        for proc in children:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


def poll(source: Callable[[], float], ok: Callable[[float], bool], limit: float = 5.0) -> list[float]:
    """Sample every 0.2 s until ``ok`` holds (at most ``limit`` s); return all samples."""
    seen: list[float] = []
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.2) + 1):
        seen.append(source())
        if ok(seen[-1]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize("program", [BUSY, PARENT_OF_BUSY], ids=["busy child", "busy grandchild"])
def test_task_source_counts_a_busy_task_and_its_children(spawn, program: str) -> None:
    child = spawn(program)
    src = TaskLoadSource(lambda: [child.pid])
    seen = poll(src.demand, lambda d: d > 0.7)
    assert seen[-1] > 0.7, seen


def test_task_source_sleeping_child_is_near_zero(spawn) -> None:
    child = spawn(SLEEPY)
    src = TaskLoadSource(lambda: [child.pid])
    src.demand()  # first cpu_percent call only starts the measurement
    time.sleep(0.2)
    seen = poll(src.demand, lambda d: d < 0.3)
    assert seen[-1] < 0.3, seen


def test_task_source_ignores_vanished_pids(spawn) -> None:
    child = spawn(BUSY)
    pids = [child.pid]
    src = TaskLoadSource(lambda: pids)
    assert src.demand() > 0.0
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=5)
    assert src.demand() == 0.0  # the cached process is gone
    pids.append(2**31 - 1)  # never a live pid
    assert src.demand() == 0.0
    assert TaskLoadSource(lambda: []).demand() == 0.0


# ------------------------------------------------------------- HostLoadSource


def test_host_source_parses_running_count_minus_reader(tmp_path) -> None:
    f = tmp_path / "loadavg"
    f.write_text("0.50 0.40 0.30 3/120 4567\n")
    assert HostLoadSource(str(f)).demand() == 2.0
    f.write_text("0.00 0.00 0.00 1/80 4567\n")
    assert HostLoadSource(str(f)).demand() == 0.0


def test_host_source_falls_back_to_loadavg(tmp_path) -> None:
    d = HostLoadSource(str(tmp_path / "missing")).demand()
    assert math.isfinite(d) and d >= 0.0


def test_host_source_non_negative_and_sees_busy_child(spawn) -> None:
    src = HostLoadSource()
    assert src.demand() >= 0.0
    if not os.path.exists("/proc/loadavg"):
        pytest.skip("the fallback is a 1-minute average; too slow to see a child")
    spawn(BUSY)
    # The busy child is always runnable, so the host count includes it at least.
    seen = poll(src.demand, lambda d: d >= 1.0, limit=3.0)
    assert seen[-1] >= 1.0, seen


# ---------------------------------------------------------------- LoadSampler


class ConstantSource:
    def __init__(self, value: float) -> None:
        self.value = value

    def demand(self) -> float:
        return self.value


def test_sampler_normalises_by_capacity() -> None:
    sampler = LoadSampler(ConstantSource(3.0), cpus=2, speed=1.5)
    v = sampler.sample(0.0)
    assert isinstance(v, LoadVector)
    assert v.load == pytest.approx(1.0)
    assert v.cpus == 2 and v.speed == 1.5


def test_sampler_smooths_before_normalising() -> None:
    source = ConstantSource(0.0)
    sampler = LoadSampler(source, cpus=4, speed=0.5, smoother=LoadSmoother(rise_time=1.0))
    assert sampler.sample(0.0).load == 0.0
    source.value = 2.0
    assert sampler.sample(1.0).load == pytest.approx((1.0 - math.exp(-1.0)) * 2.0 / 2.0)
    source.value = 0.0
    assert sampler.sample(2.0).load == 0.0


def test_sampler_memory_tasks_and_python() -> None:
    sampler = LoadSampler(ConstantSource(0.0), cpus=1, speed=1.0, task_counts=lambda: (2, 3))
    v = sampler.sample(0.0)
    assert v.mem_total > 0
    assert 0 < v.mem_free <= v.mem_total
    assert (v.local_tasks, v.guest_tasks, v.tasks) == (2, 3, 5)
    assert v.python == platform.python_version()


def test_sampler_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError):
        LoadSampler(ConstantSource(0.0), cpus=0, speed=1.0)
    with pytest.raises(ValueError):
        LoadSampler(ConstantSource(0.0), cpus=1, speed=0.0)


def test_detect_cpus() -> None:
    n = detect_cpus()
    assert isinstance(n, int)
    assert 1 <= n <= (os.cpu_count() or n)
