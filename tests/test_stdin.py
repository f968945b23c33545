"""A task's stdin by offset: the home's log of it, and the runtime's count of what the
program has taken (what a moved copy reads on from)."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosixd.core.stdinlog import StdinLog, StdinOverrun
from mosrun.runtime import stdin


def test_a_copy_that_takes_over_is_resent_everything_from_its_checkpoints_offset() -> None:
    log = StdinLog(ahead=100, keep=10)
    log.append(b"0123456789")
    assert log.acked(4) == 4  # the first copy's pipe got 4 bytes: mosrun may send 4 more
    log.append(b"abcd")
    # The first copy is frozen having taken 3 bytes; bytes 4..13 never reached it.
    data, lost = log.resume(3)
    assert (data, lost) == (b"3456789abcd", 0)
    # The new copy's node writes them; mosrun hears only of what is new to it.
    assert log.acked(1) == 0 and log.acked(10) == 10
    log.eof = True
    assert log.delivered == log.end == 14


def test_the_log_keeps_only_what_a_copy_may_still_need_and_bounds_what_runs_ahead() -> None:
    log = StdinLog(ahead=8, keep=4)
    for _ in range(100):
        log.append(b"x" * 8)
        log.acked(8)
    assert len(log.data) <= 4 + 8 and log.delivered == 800
    log.append(b"y" * 8)
    with pytest.raises(StdinOverrun, match="9 bytes of stdin sent ahead of the task, over the limit of 8"):
        log.append(b"z")
    # A restart from before what is kept is told how much it skips.
    assert log.resume(700)[1] == log.base - 700 > 0


def test_a_stored_checkpoint_pins_the_stdin_after_it() -> None:
    log = StdinLog(ahead=8, keep=4, held=64)
    log.append(b"a" * 8)
    log.acked(8)
    log.pinned = 5  # a checkpoint taken with 5 bytes read: within what is kept
    for _ in range(4):
        log.append(b"b" * 8)
        log.acked(8)
    assert log.resume(5) == (b"a" * 3 + b"b" * 32, 0)
    assert log.acked(35) == 0  # the copy that took over got them all again: nothing new for mosrun
    for _ in range(10):  # ... but only up to ``held`` bytes
        log.append(b"c" * 8)
        log.acked(8)
    assert len(log.data) <= 64 and log.resume(5)[1] > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=50), st.integers(0, 60)), min_size=1, max_size=40),
       st.data())
def test_whatever_the_moves_the_copies_together_see_the_stream_once_in_order(
        chunks: list[tuple[bytes, int]], data: st.DataObject) -> None:
    """Model: a copy's pipe gets what the home sends it; at a move, the copy has taken some
    prefix of its pipe, and the next copy is resent from there. Taken bytes, end to end,
    are the stream."""
    log = StdinLog(ahead=1 << 20, keep=1 << 20)
    stream, taken, pipe, offset = b"", b"", b"", 0  # pipe: sent to the current copy, not taken
    for chunk, _ in chunks:
        log.append(chunk)
        stream += chunk
        pipe += chunk
        log.acked(len(chunk))
        if data.draw(st.booleans()):  # a move: the copy took some of its pipe, then froze
            took = data.draw(st.integers(0, len(pipe)))
            taken, offset = taken + pipe[:took], offset + took
            resent, lost = log.resume(offset)
            assert lost == 0
            pipe = resent
            log.acked(len(resent))
    assert taken + pipe == stream


# ---- the runtime's side: what the program took, whatever it used to read -------------------

def _installed(payload: bytes) -> None:
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, payload), os.close(w)), daemon=True).start()
    stdin.install(r)


@pytest.fixture(autouse=True)
def _restore_sys_stdin():  # type: ignore[no-untyped-def]
    import sys

    saved = sys.stdin, sys.__stdin__
    yield
    sys.stdin, sys.__stdin__ = saved
    stdin._source = stdin._text = None


def test_lines_read_through_sys_stdin_are_counted_as_taken_and_no_further() -> None:
    import sys

    payload = "".join(f"{i}\n" for i in range(20000)).encode()
    _installed(payload)
    assert sys.stdin.readline() == "0\n"
    assert stdin.taken() == 2  # python would have read 8 KiB ahead; we count what it took
    first = [next(sys.stdin) for _ in range(999)]
    assert first[-1] == "999\n" and stdin.taken() == len("".join(f"{i}\n" for i in range(1000)))
    rest = sys.stdin.read()
    assert rest == "".join(f"{i}\n" for i in range(1000, 20000)) and stdin.taken() == len(payload)


def test_bytes_text_and_input_mix_as_in_python_and_a_resumed_copy_counts_from_its_offset() -> None:
    import builtins
    import sys

    _installed("héllo\r\nworld\rlast".encode())
    assert builtins.input() == "héllo"
    assert sys.stdin.buffer.read(2) == b"wo"
    assert stdin.taken() == len("héllo\r\n".encode()) + 2
    assert sys.stdin.read() == "rld\nlast"
    # A restored copy: its pipe starts at the offset its checkpoint gave.
    _installed(b"more\n")
    stdin.resume_at(1000)
    assert stdin.taken() == 1000
    assert sys.stdin.readline() == "more\n" and stdin.taken() == 1005
    assert sys.stdin.readline() == ""


def test_iteration_mixed_with_readline_and_a_break_counts_exactly_what_was_taken() -> None:
    import sys

    payload = "".join(f"{i}\n" for i in range(5000)).encode()
    _installed(payload)
    seen = []
    for line in sys.stdin:
        seen.append(line)
        if line == "10\n":
            seen.append("readline:" + sys.stdin.readline())  # the loop's next line, taken here
        if line == "3000\n":
            break
    assert seen[:13] == [f"{i}\n" for i in range(11)] + ["readline:11\n", "12\n"]
    assert seen[-1] == "3000\n" and len(seen) == 3001
    assert stdin.taken() == len("".join(f"{i}\n" for i in range(3001)))
    assert next(iter(sys.stdin)) == "3001\n"  # a new loop goes on from there
