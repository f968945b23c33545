"""``mosps``: the tasks a node knows — those whose home it is (and where they run now) and
those it runs for other homes. A user sees their own tasks; other users' are only counted
(root and the admin group see all).

Exit codes: 0; 2 usage; 3 no daemon found or reachable; 4 refused (wrong cluster key over HOST:PORT); 1 other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mosrun.commands import client


def format_tasks(listing: dict[str, Any], now: float | None = None) -> str:
    """A plain table, one task per line, with fields a user can grep."""
    now = time.time() if now is None else now
    lines = [f"{'TASK':<14} {'USER':<10} {'HOME':<6} {'WHERE':<6} {'STATE':<9} {'AGE':>7} {'CPU':>8} "
             f"{'RSS':>8}  COMMAND"]
    for t in listing["tasks"]:
        age = max(0.0, now - t["started"])
        state = f"queued:{t['queue']}" if t.get("queue") else t["state"]
        lines.append(f"{t['id']:<14} {t['user']:<10} {t['home']:<6} {t['where'] or '-':<6} {state:<9} "
                     f"{age:>6.0f}s {t['cpu']:>7.1f}s {t['rss'] / 2**20:>6.1f}M  {t['command']}")
    if listing.get("others"):
        lines.append(f"({listing['others']} task(s) of other users not shown)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mosps", description="list the tasks a mosix node knows")
    client.add_target_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        with client.open(args) as conn:
            listing = conn.list_tasks()
    except client.ClientError as exc:
        print(f"mosps: {exc}", file=sys.stderr)
        return exc.exit_code
    shown = {"node": listing["node"], "tasks": listing["tasks"], "others": listing.get("others", 0)}
    print(json.dumps(shown) if args.json else format_tasks(listing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
