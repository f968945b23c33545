"""The separate-hosts rig comes up and goes down without a trace, also after a crash."""

from __future__ import annotations

import signal

import pytest
from conftest import wait_for
from rig import HostsRig, RigError, leftovers, unavailable

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


@pytest.fixture(autouse=True)
def no_rig_before_or_after() -> None:
    if why := unavailable():
        pytest.skip(why)
    assert leftovers() == [], "a rig is up already"
    yield
    assert leftovers() == []


def test_up_and_down_leave_nothing_behind() -> None:
    rig = HostsRig(2)
    try:
        rig.up("lan")
        kinds = {line.split()[0] for line in leftovers()}
        assert kinds == {"namespace", "mount", "process"}  # what there is to clean: it is seen
        wait_for(rig.converged, 60)
    finally:
        rig.down()


def test_a_second_up_cleans_what_a_crashed_rig_left() -> None:
    crashed = HostsRig(2)
    crashed.up("raw", daemons=False)
    stray = crashed.popen("n1", ["sleep", "600"])  # what a killed test run leaves running
    again = HostsRig(2)
    try:
        again.up("raw", daemons=False)  # never told about the first one
        assert stray.wait(timeout=10) == -signal.SIGKILL
        assert again.ping("n1", "n2", 3, 0.01)["rtt"]
    finally:
        again.down()


def test_the_rig_says_why_it_cannot_be_made() -> None:
    with pytest.raises(RigError, match="the rig takes 1..200 nodes, got 0"):
        HostsRig(0)
