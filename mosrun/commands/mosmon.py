"""mosmon: watch the load of a mosix cluster.

``mosmon`` shows a live, full-terminal view with one bar per node; ``mosmon --once``
prints a single plain-text frame and ``mosmon --json`` the raw node list.

The module is split in two: a pure view layer (rows from a snapshot, human units, bar
scaling, rendering a frame to a string) that needs neither a terminal nor a daemon, and a
thin live loop (:func:`run_live`) that polls a fetch function and reads keys.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import shutil
import sys
import termios
import time
import tty
from dataclasses import dataclass
from typing import IO, Any, Callable, Mapping

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

Snapshot = Mapping[str, Any]

METRICS = ("load", "speed", "memory", "tasks")
KEYS = {"l": "load", "s": "speed", "m": "memory", "t": "tasks"}
# \x03 is Ctrl-C as a byte: it only arrives this way if the terminal is in raw mode.
QUIT_KEYS = frozenset("qQ\x03")
STATE_STYLES = {"up": "green", "blocked": "yellow", "suspect": "bold magenta", "down": "red", "left": "blue"}
_EIGHTHS = " ▏▎▍▌▋▊▉"


def metric_for_key(key: str) -> str | None:
    """Return the metric a key selects (``l``, ``s``, ``m``, ``t``), or None."""
    return KEYS.get(key.lower())


def human_bytes(n: float | None) -> str:
    """Format a byte count compactly with binary units: ``512B``, ``1.5K``, ``12G``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in "BKMGTP":
        if abs(value) < 1024 or unit == "P":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)}B"
    return f"{value:.1f}{unit}" if abs(value) < 10 else f"{value:.0f}{unit}"


def human_age(seconds: float | None) -> str:
    """Format the age of a node's information: ``0.8s``, ``12s``, ``3m``, ``2h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m" if seconds < 3600 else f"{seconds // 3600:.0f}h"


def metric_value(node: Mapping[str, Any], metric: str) -> float | None:
    """The main figure of one node for a metric; None when the node lacks the data."""
    if metric == "memory":
        total, free = node.get("mem_total"), node.get("mem_free")
        if not total or free is None:
            return None
        return max(0.0, min(1.0, (total - free) / total))
    value = node.get(metric)  # load, speed and tasks are fields of the same name
    return None if value is None else float(value)


def metric_scale(nodes: list[Mapping[str, Any]], metric: str) -> float:
    """The value that fills a whole bar for this metric across these nodes.

    Load is scaled to at least 1.0 so a half-busy cluster shows half bars, and to the
    largest load when some node is overloaded so every bar stays comparable.
    """
    if metric == "memory":
        return 1.0
    values = [v for v in (metric_value(n, metric) for n in nodes) if v is not None]
    return max([1.0, *values])


def format_figure(value: float | None, metric: str) -> str:
    """Format a main figure: load and speed with two decimals, memory in %, tasks whole."""
    if value is None:
        return "-"
    return {"memory": f"{value * 100:.0f}%", "tasks": f"{value:.0f}"}.get(metric, f"{value:.2f}")


def bar(fraction: float, width: int, *, ascii: bool = False) -> str:
    """A horizontal bar ``width`` characters wide filled to ``fraction`` (clamped to 0..1).

    The ASCII form (``###.....``) is one whitespace-free token so plain output stays easy
    to split into fields; the block form uses eighth blocks for a smoother live view.
    """
    fraction = max(0.0, min(1.0, fraction))
    if ascii:
        filled = round(fraction * width)
        return "#" * filled + "." * (width - filled)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


@dataclass(frozen=True)
class Row:
    """One node's line in a frame, already formatted."""

    node_id: str
    state: str
    value: float | None
    fraction: float
    figure: str
    cpus: str
    speed: str
    memory: str
    tasks: str
    age: str
    is_self: bool


def build_rows(snap: Snapshot, metric: str) -> list[Row]:
    """Turn a cluster snapshot into formatted rows for ``metric``, in snapshot order."""
    nodes = list(snap.get("nodes", []))
    scale = metric_scale(nodes, metric)
    rows = []
    for node in nodes:
        value = metric_value(node, metric)
        total, free = node.get("mem_total"), node.get("mem_free")
        used = total - free if total is not None and free is not None else None
        speed = node.get("speed")
        tasks = node.get("tasks")
        rows.append(Row(
            node_id=str(node.get("id", "?")),
            state=str(node.get("state", "?")),
            value=value,
            fraction=0.0 if value is None else value / scale,
            figure=format_figure(value, metric),
            cpus=str(node.get("cpus", "-")),
            speed="-" if speed is None else f"{speed:.2f}",
            memory=f"{human_bytes(used)}/{human_bytes(free)}",
            tasks="-" if tasks is None else
            f"{tasks}({node.get('local_tasks', 0)}+{node.get('guest_tasks', 0)})",
            age=human_age(node.get("age")),
            is_self=bool(node.get("self")),
        ))
    return rows


def header(snap: Snapshot | None, metric: str, *, keys: bool) -> str:
    """The summary line: answering node, node counts by state, metric, key help."""
    parts = ["mosmon"]
    if snap is not None:
        nodes = snap.get("nodes", [])
        count = {s: sum(1 for n in nodes if n.get("state") == s) for s in STATE_STYLES}
        parts[0] += (f" @{snap.get('node', '?')}: {len(nodes)} nodes, {count['up']} up, "
                     f"{count['down']} down, {count['blocked']} blocked")
        # Rarer states only when there are some, so the usual line stays short.
        parts[0] += "".join(f", {count[s]} {s}" for s in ("suspect", "left") if count[s])
    parts.append(f"figure: {metric}")
    if keys:
        parts.append("l=load s=speed m=mem t=tasks q=quit")
    return " | ".join(parts)


def bar_width_for(width: int) -> int:
    """How wide the bars can be on a ``width``-column screen (other columns take ~70)."""
    return max(8, min(60, width - 70))


def build_view(snap: Snapshot | None, metric: str, *, bar_width: int = 20, plain: bool = False,
               keys: bool = True, notice: str | None = None) -> RenderableType:
    """The renderable for one frame; ``plain`` uses ASCII bars, ``keys`` adds key help."""
    lines: list[RenderableType] = [
        Text(header(snap, metric, keys=keys), no_wrap=True, overflow="ellipsis")]
    if notice:
        lines.append(Text(notice, style="bold red", no_wrap=True))
    table = Table(box=None, pad_edge=False, header_style="" if plain else "bold underline")
    for name, justify in (("NODE", "left"), (metric.upper(), "left"), ("", "right"),
                          ("CPUS", "right"), ("SPEED", "right"), ("MEM USED/FREE", "right"),
                          ("TASKS(l+g)", "right"), ("STATE", "left"), ("AGE", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in build_rows(snap or {}, metric):
        bar_style = "cyan"
        if metric == "load" and row.value is not None:  # 1.0 = the node's CPUs are full
            bar_style = "green" if row.value < 0.7 else "yellow" if row.value < 1 else "red"
        table.add_row(
            Text(row.node_id, style="bold" if row.is_self else ""),
            Text(bar(row.fraction, bar_width, ascii=plain), style=bar_style),
            row.figure, row.cpus, row.speed, row.memory, row.tasks,
            Text(row.state, style=STATE_STYLES.get(row.state, "")), row.age,
            style="dim" if row.state in ("down", "left") else None,
        )
    lines.append(table)
    return Group(*lines)


def render_frame(snap: Snapshot | None, metric: str = "load", *, width: int = 200,
                 color: bool = False, bar_width: int = 20, notice: str | None = None) -> str:
    """Render one frame to a string; without ``color`` it is plain text, one line per node."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None)
    console.print(build_view(snap, metric, bar_width=bar_width, plain=not color, keys=False,
                             notice=notice))
    # Trailing cell padding carries no information and makes greps and diffs brittle.
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


def _tty_fd(stream: IO[Any] | None) -> int | None:
    """The descriptor of ``stream`` if it is a terminal we can read keys from."""
    try:
        fd = stream.fileno() if stream is not None else -1
        return fd if fd >= 0 and os.isatty(fd) else None
    except (AttributeError, ValueError, OSError):
        return None


def run_live(fetch: Callable[[], Snapshot], stdin: IO[Any] | None, console: Console, *,
             metric: str = "load", interval: float = 1.0) -> None:
    """Show the live view until ``q`` or Ctrl-C; ``fetch`` returns a fresh snapshot.

    The fetch is retried every ``interval`` seconds; while it fails the last good snapshot
    stays on screen with a one-line notice. Keys are read in cbreak mode with select so a
    key press redraws at once without waiting for the next fetch.
    """
    term_fd = _tty_fd(stdin)
    saved = termios.tcgetattr(term_fd) if term_fd is not None else None
    fd = term_fd  # where keys are read from; None once input ends
    snap: Snapshot | None = None
    notice: str | None = "connecting..."
    next_fetch = 0.0
    try:
        if term_fd is not None:
            tty.setcbreak(term_fd)
        with Live(console=console, screen=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                if time.monotonic() >= next_fetch:
                    try:
                        snap, notice = fetch(), None
                    except Exception as err:  # the view must outlive any daemon hiccup
                        notice = f"daemon unreachable: {err} (retrying every {interval:g}s)"
                    next_fetch = time.monotonic() + interval
                live.update(build_view(snap, metric, bar_width=bar_width_for(console.width),
                                       notice=notice), refresh=True)
                timeout = max(0.0, next_fetch - time.monotonic())
                if fd is None:
                    time.sleep(timeout)
                    continue
                if not select.select([fd], [], [], timeout)[0]:
                    continue
                data = os.read(fd, 64).decode(errors="ignore")
                if not data:  # end of input: keep refreshing, stop listening for keys
                    fd = None
                for key in data:
                    if key in QUIT_KEYS:
                        return
                    metric = metric_for_key(key) or metric
    except KeyboardInterrupt:
        return
    finally:
        if term_fd is not None and saved is not None:
            termios.tcsetattr(term_fd, termios.TCSADRAIN, saved)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``mosmon``."""
    from mosrun.commands import client  # lazily: the view layer should load without gRPC

    parser = argparse.ArgumentParser(prog="mosmon", description="Watch the cluster's load.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="print one plain frame and exit")
    mode.add_argument("--json", action="store_true", help="print the node list as JSON")
    parser.add_argument("--metric", choices=METRICS, default="load",
                        help="main figure to show first (default: load)")
    client.add_target_options(parser, local=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mosmon`` command; returns the exit status."""
    from mosrun.commands import client

    args = build_parser().parse_args(argv)
    try:
        with client.open(args) as conn:
            if args.json:
                snap = conn.cluster_status()
                print(json.dumps({"node": snap.get("node"), "nodes": snap["nodes"]}))
            elif args.once:
                snap = conn.cluster_status()
                if sys.stdout.isatty():  # a person is looking: colours, fit the terminal
                    width = shutil.get_terminal_size().columns
                    frame = render_frame(snap, args.metric, width=width, color=True,
                                         bar_width=bar_width_for(width))
                else:
                    frame = render_frame(snap, args.metric)
                sys.stdout.write(frame)
            else:
                run_live(conn.cluster_status, sys.stdin, Console(), metric=args.metric)
    except client.ClientError as err:
        print(f"mosmon: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130  # Ctrl-C while connecting or printing: the shell convention
    return 0


if __name__ == "__main__":
    sys.exit(main())
