"""Tests for mosixd.core.migration: the sans-IO state machine of one move, with explicit clocks."""

from __future__ import annotations

import random

import pytest

from mosixd.core.migration import (
    EndSourceCopy, FinishTransfer, Migration, MigrationPlan, MigrationState, NotifyHome,
    ReleaseTarget, Report, RequestFreeze, ReserveTarget, ResumeSource, SendChunk,
    StartOnTarget,
)

S = MigrationState
MiB = 1 << 20
T0 = 100.0


def plan(**kw: object) -> MigrationPlan:
    base: dict[str, object] = dict(task_id="t1", source="n1", target="n2", reason="manual",
                                   home="n3", chunk_size=MiB, window=4 * MiB)
    base.update(kw)
    return MigrationPlan(**base)  # type: ignore[arg-type]


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions]


def aborted_cleanly(m: Migration, actions: list, *, reserved: bool = True) -> None:
    """The task stays where it was: resumed, target released, reported, never ended."""
    assert m.state is S.ABORTED
    assert kinds(actions) == ([ResumeSource, ReleaseTarget, Report] if reserved
                              else [ResumeSource, Report])
    assert not actions[-1].ok and actions[-1].outcome == m.outcome
    assert m.outcome.startswith("t1 stays on n1: ")


def to_freezing(m: Migration, now: float = T0) -> None:
    assert m.start(now) == [ReserveTarget(m.plan)]
    assert m.target_reserved(now + 0.1) == [RequestFreeze("t1")]


def to_transferring(m: Migration, size: int, now: float = T0) -> list:
    to_freezing(m, now)
    return m.frozen(size, now + 0.2)


def to_starting(m: Migration, size: int = 100, now: float = T0) -> None:
    sent = to_transferring(m, size, now)
    out: list = []
    for c in sent:
        out = m.chunk_acked(c.offset, c.size, now + 0.3)
    assert out == [FinishTransfer(size), StartOnTarget()]


# --- the happy path --------------------------------------------------------------------

def test_happy_path_streams_in_window_and_ends_source_only_after_start() -> None:
    m = Migration(plan(), T0)
    assert m.state is S.PLANNED and m.outcome == "" and m.deadline is None
    assert m.start(T0) == [ReserveTarget(m.plan)]
    assert m.state is S.RESERVING and m.deadline == T0 + m.plan.reserve_timeout
    assert m.target_reserved(T0 + 1) == [RequestFreeze("t1")]
    size = 10 * MiB + 123
    first = m.frozen(size, T0 + 2)
    # A 4 MiB window of 1 MiB chunks: four go at once, the rest wait for acks.
    assert first == [SendChunk(i * MiB, MiB) for i in range(4)]
    assert m.state is S.TRANSFERRING and m.progress == (0, size)
    sent = list(first)
    # Acks out of order: each one frees room for exactly one more chunk.
    assert m.chunk_acked(2 * MiB, MiB, T0 + 3) == [SendChunk(4 * MiB, MiB)]
    assert m.chunk_acked(0, MiB, T0 + 3) == [SendChunk(5 * MiB, MiB)]
    sent += [SendChunk(4 * MiB, MiB), SendChunk(5 * MiB, MiB)]
    acked = {0, 2 * MiB}
    out: list = []
    while len(acked) < len(sent) or sent[-1].offset + sent[-1].size < size:
        c = next(c for c in sent if c.offset not in acked)
        acked.add(c.offset)
        out = m.chunk_acked(c.offset, c.size, T0 + 4)
        assert EndSourceCopy not in kinds(out)
        sent += [a for a in out if isinstance(a, SendChunk)]
    # The chunks tile the checkpoint exactly; the last is the remainder.
    assert [c.offset for c in sent] == [i * MiB for i in range(11)]
    assert sent[-1] == SendChunk(10 * MiB, 123)
    assert out[-2:] == [FinishTransfer(size), StartOnTarget()]
    assert m.state is S.STARTING and m.progress == (size, size)
    done = m.target_started(T0 + 5.5)
    assert done == [EndSourceCopy(), NotifyHome("n2"), Report("t1 moved from n1 to n2", True)]
    assert m.state is S.DONE and m.finished and m.deadline is None
    assert m.freeze_duration == pytest.approx(3.5)
    assert [s for _, s in m.history] == [S.PLANNED, S.RESERVING, S.FREEZING,
                                         S.TRANSFERRING, S.STARTING, S.DONE]
    assert m.history[-1] == (T0 + 5.5, S.DONE)


def test_empty_checkpoint_and_chunk_bigger_than_window() -> None:
    m = Migration(plan(), T0)
    assert to_transferring(m, 0) == [FinishTransfer(0), StartOnTarget()]
    m = Migration(plan(chunk_size=8 * MiB, window=MiB), T0)
    assert to_transferring(m, 10 * MiB) == [SendChunk(0, 8 * MiB)]  # alone, never stuck
    assert m.chunk_acked(0, 8 * MiB, T0 + 1) == [SendChunk(8 * MiB, 2 * MiB)]


def test_plan_is_checked() -> None:
    with pytest.raises(ValueError):
        plan(target="n1")
    with pytest.raises(ValueError):
        plan(chunk_size=0)
    with pytest.raises(ValueError):
        Migration(plan(), T0).frozen(-1, T0)


# --- every failure before the confirmation leaves the task where it was ----------------

def test_target_refuses() -> None:
    m = Migration(plan(), T0)
    m.start(T0)
    out = m.target_refused("node is blocked", T0 + 1)
    aborted_cleanly(m, out)
    assert "refused: node is blocked" in m.outcome


def test_reserve_timeout() -> None:
    m = Migration(plan(reserve_timeout=5), T0)
    m.start(T0)
    assert m.tick(T0 + 4.9) == []
    aborted_cleanly(m, m.tick(T0 + 5))
    assert "target n2 did not answer within 5s" in m.outcome


def test_freeze_failure_message_reaches_the_user() -> None:
    msg = "cannot checkpoint state.conn: objects of type socket.socket cannot be pickled"
    m = Migration(plan(), T0)
    to_freezing(m)
    out = m.freeze_failed(msg, T0 + 1)
    aborted_cleanly(m, out)
    assert out[0] == ResumeSource(msg)
    assert out[-1].outcome == f"t1 stays on n1: {msg}"


def test_freeze_timeout() -> None:
    m = Migration(plan(freeze_timeout=30), T0)
    to_freezing(m)
    assert m.tick(T0 + 30) == []  # counted from the reservation, at T0 + 0.1
    aborted_cleanly(m, m.tick(T0 + 30.1))
    assert "no safe point" in m.outcome
    assert m.frozen(10, T0 + 31) == []  # a late checkpoint is not sent anywhere


def test_target_lost_mid_transfer() -> None:
    m = Migration(plan(), T0)
    sent = to_transferring(m, 6 * MiB)
    m.chunk_acked(0, MiB, T0 + 1)
    aborted_cleanly(m, m.peer_lost("n2", T0 + 2))
    assert "target node n2 lost" in m.outcome
    assert m.chunk_acked(sent[1].offset, sent[1].size, T0 + 3) == []


def test_transfer_timeout_counts_from_last_progress() -> None:
    m = Migration(plan(transfer_timeout=10), T0)
    to_transferring(m, 3 * MiB)
    assert m.chunk_acked(0, MiB, T0 + 9) == []  # all sent already, progress though
    assert m.tick(T0 + 18.9) == []
    assert m.deadline == T0 + 19
    aborted_cleanly(m, m.tick(T0 + 19))
    assert "stalled within 10s" in m.outcome


def test_target_fails_to_start() -> None:
    m = Migration(plan(), T0)
    to_starting(m)
    aborted_cleanly(m, m.target_failed("ImportError: no module named numpy", T0 + 1))
    assert "numpy" in m.outcome and m.freeze_duration is None


def test_start_timeout() -> None:
    m = Migration(plan(start_timeout=30), T0)
    to_starting(m)
    aborted_cleanly(m, m.tick(T0 + 31))
    assert m.target_started(T0 + 32) == []  # too late: the source copy already resumed


@pytest.mark.parametrize("node", ["n1", "n3"])
def test_source_or_home_lost_before_confirmation(node: str) -> None:
    m = Migration(plan(), T0)
    to_freezing(m)
    aborted_cleanly(m, m.peer_lost(node, T0 + 1))


def test_lost_before_start_and_outside_abort() -> None:
    m = Migration(plan(), T0)
    aborted_cleanly(m, m.peer_lost("n2", T0), reserved=False)  # nothing to release
    assert m.start(T0) == []
    m = Migration(plan(), T0)
    to_transferring(m, 10)
    aborted_cleanly(m, m.abort("task exited", T0 + 1))
    assert m.abort("again", T0 + 2) == []


# --- after the confirmation the task lives on the target --------------------------------

def test_source_lost_after_start_is_irrelevant() -> None:
    m = Migration(plan(), T0)
    to_starting(m)
    assert EndSourceCopy() in m.target_started(T0 + 1)
    for event in (lambda: m.peer_lost("n1", T0 + 2), lambda: m.peer_lost("n2", T0 + 2),
                  lambda: m.target_failed("x", T0 + 2), lambda: m.tick(T0 + 1e6),
                  lambda: m.abort("x", T0 + 2)):
        assert event() == []
    assert m.state is S.DONE and m.outcome == "t1 moved from n1 to n2"


# --- events out of order or duplicated ---------------------------------------------------

def test_out_of_order_and_duplicate_events_are_ignored() -> None:
    m = Migration(plan(), T0)
    # Nothing before start, and nothing that belongs to a later step.
    assert m.target_reserved(T0) == [] and m.frozen(5, T0) == []
    assert m.target_started(T0) == [] and m.chunk_acked(0, 5, T0) == []
    m.start(T0)
    assert m.start(T0) == []
    assert m.frozen(5, T0) == [] and m.freeze_failed("x", T0) == []
    assert m.target_reserved(T0) and m.target_reserved(T0) == []
    assert m.target_refused("late", T0) == [] and m.state is S.FREEZING
    sent = m.frozen(3 * MiB, T0)
    assert m.frozen(3 * MiB, T0) == [] and m.tick(T0 + 1) == []
    # StartOnTarget needs every byte acknowledged; a claim of start before is bogus.
    assert m.target_started(T0) == [] and m.state is S.TRANSFERRING
    assert m.chunk_acked(0, MiB, T0) == []
    assert m.chunk_acked(0, MiB, T0) == []  # duplicate
    assert m.chunk_acked(5 * MiB, MiB, T0) == []  # never sent
    assert m.chunk_acked(MiB, 7, T0) == []  # wrong size
    assert m.progress == (MiB, 3 * MiB)
    m.chunk_acked(sent[2].offset, sent[2].size, T0)
    assert m.chunk_acked(sent[1].offset, sent[1].size, T0)[-1] == StartOnTarget()
    assert m.chunk_acked(sent[1].offset, sent[1].size, T0) == []
    assert kinds(m.target_started(T0)) == [EndSourceCopy, NotifyHome, Report]
    assert m.target_started(T0) == []  # never two EndSourceCopy


def test_unrelated_node_lost_is_ignored() -> None:
    m = Migration(plan(home=None), T0)
    to_freezing(m)
    assert m.peer_lost("n9", T0) == [] and m.state is S.FREEZING


# --- the rules hold over random event orders ---------------------------------------------

def _random_run(seed: int) -> MigrationState:
    rng = random.Random(seed)
    size = rng.choice([0, 1, 5, MiB - 1, 3 * MiB, 7 * MiB + 5])
    p = plan(chunk_size=rng.choice([1, 2, 3]) * MiB // 2, window=rng.choice([1, 2, 3]) * MiB,
             home=rng.choice(["n1", "n2", "n3", None]))
    m = Migration(p, 0.0)
    now = 0.0
    log: list[tuple[str, list]] = []
    sent: list[SendChunk] = []

    def junk_chunk() -> tuple[int, int]:
        if sent and rng.random() < 0.8:
            c = rng.choice(sent)
            return c.offset, c.size
        return rng.randrange(0, 8 * MiB), rng.choice([1, MiB])

    events = {
        "start": lambda: m.start(now),
        "reserved": lambda: m.target_reserved(now),
        "refused": lambda: m.target_refused("full", now),
        "frozen": lambda: m.frozen(size, now),
        "freeze_failed": lambda: m.freeze_failed("cannot checkpoint x", now),
        "ack": lambda: m.chunk_acked(*junk_chunk(), now),
        "started": lambda: m.target_started(now),
        "target_failed": lambda: m.target_failed("oom", now),
        "lost": lambda: m.peer_lost(rng.choice(["n1", "n2", "n3", "n4"]), now),
        "tick": lambda: m.tick(now),
    }
    # Mostly the events of a good run, so that many runs get to DONE.
    weights = {"start": 3, "reserved": 4, "refused": 0.2, "frozen": 4, "freeze_failed": 0.2,
               "ack": 30, "started": 4, "target_failed": 0.2, "lost": 0.2, "tick": 3}
    names = list(weights)
    for _ in range(rng.randrange(5, 80)):
        now += rng.expovariate(1.0)
        name = rng.choices(names, [weights[n] for n in names])[0]
        before = m.state
        out = events[name]()
        log.append((name, out))
        for a in out:
            if isinstance(a, SendChunk):
                assert not sent or a.offset == sent[-1].offset + sent[-1].size
                assert a.size <= p.chunk_size
                sent.append(a)
        # Never more than a window unacknowledged, or one lone chunk bigger than it.
        unacked = sum(c.size for c in sent) - m.progress[0]
        assert 0 <= unacked <= max(p.window, p.chunk_size)
        if StartOnTarget() in out:
            assert before is S.TRANSFERRING or (before is S.FREEZING and size == 0)
            assert m.progress == (size, size)
            assert sum(c.size for c in sent) == size
        if m.finished and before is m.state:
            assert out == []  # nothing after the end
    log.append(("start", m.start(now)))  # a move never started has no deadline to hit
    for _ in range(5):
        now += 1000.0
        log.append(("tick", m.tick(now)))
    assert m.finished
    flat = [type(a) for _, out in log for a in out]
    assert flat.count(EndSourceCopy) <= 1 and flat.count(Report) == 1
    if m.state is S.DONE:
        name, out = next((n, o) for n, o in log if EndSourceCopy() in o)
        assert name == "started"
        starts = [i for i, (_, o) in enumerate(log) if StartOnTarget() in o]
        ends = [i for i, (_, o) in enumerate(log) if EndSourceCopy() in o]
        assert starts and starts[0] < ends[0]
        assert ResumeSource not in flat and ReleaseTarget not in flat
    else:
        assert EndSourceCopy not in flat and flat.count(ResumeSource) == 1
        assert flat.count(ReleaseTarget) == (1 if ReserveTarget in flat else 0)
    return m.state


def test_random_event_orders_keep_the_rules() -> None:
    ends = [_random_run(seed) for seed in range(3000)]
    # Both endings are well exercised, not just the early aborts.
    assert ends.count(S.DONE) > 300 and ends.count(S.ABORTED) > 300
