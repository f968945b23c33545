"""Unit tests of mosmon: the view layer, the CLI modes and the live loop (no daemon)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import sys
import termios
import threading
import time
import types

import pytest
from rich.console import Console

from mosrun.commands import mosmon

GiB = 2**30


def node(id_, state="up", load=0.5, **extra):
    """A node entry as the daemon reports it."""
    entry = {"id": id_, "address": f"127.0.1.{id_[1:]}:7410", "state": state, "load": load,
             "cpus": 2, "speed": 1.0, "mem_total": 8 * GiB, "mem_free": 6 * GiB, "tasks": 3,
             "local_tasks": 2, "guest_tasks": 1, "age": 0.5, "generation": 1,
             "self": id_ == "n1", "python": "3.11.7"}
    entry.update(extra)
    return entry


SNAP = {"node": "n1", "nodes": [
    node("n1", load=0.42, speed=1.03, mem_free=2 * GiB, tasks=3),
    node("n2", state="blocked", load=1.6, cpus=4, speed=0.97, mem_free=GiB // 2, tasks=7,
         local_tasks=0, guest_tasks=7),
    node("n3", state="down", load=0.0, tasks=0, local_tasks=0, guest_tasks=0, age=42.0),
]}


def line_of(frame: str, node_id: str) -> list[str]:
    """The whitespace-split fields of a node's line in a plain frame."""
    lines = [ln.split() for ln in frame.splitlines() if ln.split()[:1] == [node_id]]
    assert len(lines) == 1, frame
    return lines[0]


# --- the view layer ---------------------------------------------------------------

@pytest.mark.parametrize("key,metric", [("l", "load"), ("s", "speed"), ("m", "memory"),
                                        ("t", "tasks"), ("M", "memory"), ("x", None)])
def test_key_selects_metric(key, metric):
    assert mosmon.metric_for_key(key) == metric


@pytest.mark.parametrize("metric,figure,header", [("load", "0.42", "LOAD"),
                                                  ("speed", "1.03", "SPEED"),
                                                  ("memory", "75%", "MEMORY"),
                                                  ("tasks", "3", "TASKS")])
def test_each_metric_switches_the_figure(metric, figure, header):
    frame = mosmon.render_frame(SNAP, metric)
    assert f"figure: {metric}" in frame
    assert frame.splitlines()[1].split()[1] == header
    assert line_of(frame, "n1")[2] == figure


def test_plain_frame_lists_every_node_with_state_and_numbers():
    frame = mosmon.render_frame(SNAP, "load")
    assert "\x1b" not in frame
    assert "3 nodes, 1 up, 1 down, 1 blocked" in frame
    assert line_of(frame, "n1") == ["n1", "#####...............", "0.42", "2", "1.03",
                                    "6.0G/2.0G", "3(2+1)", "up", "0.5s"]
    assert line_of(frame, "n2")[1:] == ["####################", "1.60", "4", "0.97",
                                        "7.5G/512M", "7(0+7)", "blocked", "0.5s"]


def test_down_node_row():
    fields = line_of(mosmon.render_frame(SNAP, "load"), "n3")
    assert fields[1] == "." * 20 and fields[2] == "0.00"
    assert fields[-2:] == ["down", "42s"]


def test_down_node_is_red_in_colour():
    frame = mosmon.render_frame(SNAP, "load", color=True)
    assert "\x1b[" in frame and "down" in frame


def test_suspect_and_left_nodes_are_counted_and_shown():
    snap = {"node": "n1", "nodes": [node("n1"), node("n4", state="suspect", age=3.0),
                                    node("n5", state="left", age=9.0)]}
    frame = mosmon.render_frame(snap, "load")
    assert "3 nodes, 1 up, 0 down, 0 blocked, 1 suspect, 1 left" in frame
    assert line_of(frame, "n4")[-2:] == ["suspect", "3.0s"] and line_of(frame, "n5")[-2:] == ["left", "9.0s"]
    assert "suspect" not in mosmon.render_frame(SNAP, "load")  # only when there are some
    coloured = mosmon.render_frame(snap, "load", color=True)
    assert "\x1b[" in coloured.split("n4", 1)[1].split("\n", 1)[0]


def test_nodes_appearing_and_disappearing_between_frames():
    first = mosmon.render_frame({"node": "n1", "nodes": [node("n1"), node("n2")]})
    second = mosmon.render_frame({"node": "n1", "nodes": [node("n1"), node("n4")]})
    assert "n2" in first and "n4" not in first
    assert "n4" in second and "n2 " not in second
    assert "2 nodes" in second
    assert "0 nodes" in mosmon.render_frame({"node": "n1", "nodes": []})
    assert "mosmon" in mosmon.render_frame(None, notice="daemon unreachable: gone")


def test_missing_fields_render_as_dashes():
    frame = mosmon.render_frame({"node": "n1", "nodes": [{"id": "n9", "state": "down"}]},
                                "memory")
    assert line_of(frame, "n9")[2:] == ["-", "-", "-", "-/-", "-", "down", "-"]


@pytest.mark.parametrize("n,text", [(0, "0B"), (512, "512B"), (1536, "1.5K"),
                                    (12 * 2**20, "12M"), (8 * GiB, "8.0G"),
                                    (3 * 2**40, "3.0T"), (None, "-")])
def test_human_bytes(n, text):
    assert mosmon.human_bytes(n) == text


def test_human_age():
    assert [mosmon.human_age(s) for s in (0.84, 12.2, 185, 7300)] == ["0.8s", "12s", "3m", "2h"]


def test_bar_scaling_with_load_above_one():
    nodes = [node("n1", load=0.5), node("n2", load=2.0)]
    assert mosmon.metric_scale(nodes, "load") == 2.0
    rows = mosmon.build_rows({"nodes": nodes}, "load")
    assert [r.fraction for r in rows] == [0.25, 1.0]
    # A lightly loaded cluster is not stretched to full bars.
    assert mosmon.metric_scale([node("n1", load=0.3)], "load") == 1.0
    assert mosmon.bar(0.25, 8, ascii=True) == "##......"
    assert mosmon.bar(1.7, 4, ascii=True) == "####"
    assert mosmon.bar(0.5, 4) == "██  "
    assert len(mosmon.bar(0.33, 10)) == 10


# --- main(): --json, --once and errors, with a fake client --------------------------

class FakeClientError(Exception):
    def __init__(self, msg: str, exit_code: int = 3):
        super().__init__(msg)
        self.exit_code = exit_code


@pytest.fixture
def fake_client(monkeypatch):
    """A stand-in for mosrun.commands.client whose open() yields a connection serving SNAP."""
    fake = types.ModuleType("mosrun.commands.client")
    fake.ClientError = FakeClientError
    fake.add_target_options = lambda parser, local=False: (
        parser.add_argument("--node"), parser.add_argument("--key"),
        parser.add_argument("--local", type=int))
    fake.result = SNAP

    @contextlib.contextmanager
    def open_(args):
        if isinstance(fake.result, Exception):
            raise fake.result
        yield types.SimpleNamespace(cluster_status=lambda: fake.result)

    fake.open = open_
    import mosrun.commands
    monkeypatch.setitem(sys.modules, "mosrun.commands.client", fake)
    monkeypatch.setattr(mosrun.commands, "client", fake, raising=False)
    return fake


def test_json_output_equals_the_snapshot_nodes(fake_client, capsys):
    assert mosmon.main(["--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["nodes"] == SNAP["nodes"]
    assert out.count("\n") == 1


def test_once_prints_one_plain_frame(fake_client, capsys):
    assert mosmon.main(["--once", "--node", "127.0.1.1:7410"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    for node_id in ("n1", "n2", "n3"):
        line_of(out, node_id)


def test_client_error_prints_one_line_and_returns_its_code(fake_client, capsys):
    fake_client.result = FakeClientError("no mosixd found (tried $MOSIX_NODE)", exit_code=69)
    assert mosmon.main(["--once"]) == 69
    captured = capsys.readouterr()
    assert captured.err == "mosmon: no mosixd found (tried $MOSIX_NODE)\n"
    assert captured.out == ""


def test_usage_error_exits_2(fake_client):
    with pytest.raises(SystemExit) as exc:
        mosmon.main(["--once", "--json"])
    assert exc.value.code == 2


# --- the live loop ----------------------------------------------------------------

def recording_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120, record=True)


def test_live_loop_in_a_pty_switches_metric_and_quits():
    master, slave = pty.openpty()
    stdin = os.fdopen(slave, "rb", buffering=0)
    before = termios.tcgetattr(slave)
    snaps = [SNAP, {"node": "n1", "nodes": SNAP["nodes"][:1]}]
    calls = []

    def fetch():
        calls.append(1)
        if len(calls) == 3:
            raise ConnectionError("connection refused")
        return snaps[len(calls) % 2]

    console = recording_console()
    thread = threading.Thread(target=mosmon.run_live, args=(fetch, stdin, console),
                              kwargs={"interval": 0.02}, daemon=True)
    try:
        thread.start()

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 5
            while text not in console.export_text(clear=False):
                assert time.monotonic() < deadline, f"{text!r} never shown"
                time.sleep(0.01)

        wait_for("daemon unreachable: connection refused")
        os.write(master, b"m")
        wait_for("figure: memory")
        os.write(master, b"q")
        thread.join(timeout=5)
        assert not thread.is_alive()
        text = console.export_text()
        assert "MEMORY" in text and "75%" in text
        assert termios.tcgetattr(slave) == before  # cbreak mode was undone
    finally:
        if thread.is_alive():
            os.write(master, b"q")
            thread.join(timeout=5)
        stdin.close()
        os.close(master)


def test_live_loop_without_a_tty_refreshes_until_ctrl_c():
    calls = []

    def fetch():
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return SNAP

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stdin, os.fdopen(write_end, "wb"):
        console = recording_console()
        mosmon.run_live(fetch, stdin, console, interval=0.01)
    assert len(calls) == 4
    assert "n3" in console.export_text()
