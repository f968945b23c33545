"""The order in which a home starts waiting tasks: per user by arrival, users in turn."""

from __future__ import annotations

from mosixd.core.launchqueue import LaunchQueue


def test_one_users_tasks_start_in_order_of_arrival() -> None:
    queue = LaunchQueue()
    for task in ("t1", "t2", "t3"):
        queue.join(task, "alice")
    assert queue.order() == ["t1", "t2", "t3"] and queue.head() == "t1"
    assert [queue.position(t) for t in ("t1", "t2", "t3")] == [1, 2, 3]
    queue.leave("t1", started=True)
    assert queue.order() == ["t2", "t3"] and queue.position("t1") == 0


def test_users_take_turns_so_one_with_many_tasks_does_not_hold_up_another() -> None:
    queue = LaunchQueue()
    for task in ("a1", "a2", "a3"):
        queue.join(task, "alice")
    queue.join("b1", "bob")
    queue.join("c1", "carol")
    assert queue.order() == ["a1", "b1", "c1", "a2", "a3"]
    queue.leave("a1", started=True)  # alice had her turn: bob's comes next
    assert queue.order() == ["b1", "c1", "a2", "a3"]
    queue.leave("b1", started=True)
    queue.join("b2", "bob")          # bob comes back at the end of the line
    assert queue.order() == ["c1", "a2", "b2", "a3"]


def test_a_task_that_gives_up_leaves_no_trace_and_keeps_the_turn_order() -> None:
    queue = LaunchQueue()
    queue.join("a1", "alice")
    queue.join("b1", "bob")
    queue.join("a2", "alice")
    queue.leave("a1")  # given up, not started: alice keeps her place in the turns
    assert queue.order() == ["a2", "b1"]
    queue.leave("a2")
    queue.leave("b1")
    queue.leave("b1")  # twice is harmless
    assert len(queue) == 0 and queue.head() is None and queue.order() == []
    queue.join("x", "xavier")
    queue.join("x", "xavier")  # joining twice does not queue it twice
    assert queue.order() == ["x"]
