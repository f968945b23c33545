"""A home daemon forgets its finished tasks: memory and tables stay flat over thousands of them."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import BIN, start_rig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow, pytest.mark.timeout(900)]

PY = sys.executable
PER_TASK = ("sessions", "task_records", "live_tasks", "hosted_tasks", "starting", "reservations",
            "background_jobs")


def test_two_thousand_short_tasks_leave_the_home_as_it_was(tmp_path: Path) -> None:
    rig = start_rig(3, tmp_path, "--no-balance")
    try:
        wait_for(rig.converged, 30)
        home = psutil.Process(rig.node("n1")["pid"])

        def run(count: int) -> None:
            def one(_: int) -> int:
                return subprocess.run([str(BIN / "mosrun"), PY, "-c", "pass"], env=rig.env, cwd=tmp_path,
                                      capture_output=True, timeout=120).returncode
            with ThreadPoolExecutor(4) as pool:
                assert set(pool.map(one, range(count))) == {0}

        def tables() -> dict[str, int]:
            out = rig.tool("mosctl", "--node", "n1", "status", "--json")
            return json.loads(out.stdout)["tables"]

        def idle() -> bool:
            return all(tables()[name] == 0 for name in PER_TASK)

        run(100)
        wait_for(idle, 30)
        settled = home.memory_info().rss
        run(1900)
        wait_for(idle, 30)  # reservations go once gossip confirms them: within seconds
        grown = home.memory_info().rss - settled
        assert grown < 5 << 20, f"the home grew by {grown / 2**20:.1f} MB over 1900 tasks"
        assert home.num_fds() < 100
    finally:
        rig.stop()
