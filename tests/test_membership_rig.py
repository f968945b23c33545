"""Membership on the multi-process rig: 32 real daemons on 127.0.1.x, one of them killed.

Each node's view is asked over gRPC (``bench.localcluster.ClusterWatch``), all at once, so the
spread of a death can be followed on every node; ``python -m bench.members`` times it.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from conftest import start_rig, wait_for

from bench.localcluster import ClusterWatch

pytestmark = [pytest.mark.rig, pytest.mark.slow, pytest.mark.timeout(900)]

N = 32
CHANGE = re.compile(r"peer (n\d+) \(\S+\) (is suspect|is down|left the cluster|is up again)")


def changes(log: str) -> list[tuple[str, str]]:
    """The membership changes the daemons logged, in order: (node, change)."""
    return CHANGE.findall(log)


def test_thirty_two_daemons_confirm_a_kill_9_everywhere_and_take_the_node_back(tmp_path: Path) -> None:
    rig = start_rig(N, tmp_path)
    watch = ClusterWatch(rig.runtime)
    everyone = [f"n{i}" for i in range(1, N + 1)]
    try:
        wait_for(lambda: all(v is not None and len(v) == N and set(v.values()) == {"up"}
                             for v in watch.views().values()), 240, 0.5)
        settled = len(rig.log.read_text())
        victim = "n17"
        others = [i for i in everyone if i != victim]
        os.kill(rig.node(victim)["pid"], signal.SIGKILL)
        wait_for(lambda: watch.all_see(victim, "down", others), 120, 0.2)
        views = watch.views(others)
        assert all(state == "up" for v in views.values() if v for k, state in v.items() if k != victim)
        after = changes(rig.log.read_text()[settled:])
        assert (victim, "is suspect") in after and (victim, "is down") in after
        assert {node for node, change in after if change == "is down"} == {victim}, after

        rig.start_node(victim)  # a new life (generation): taken back at once by everyone
        wait_for(lambda: watch.all_see(victim, "up", others), 120, 0.2)
    finally:
        watch.close()
        rig.stop()
