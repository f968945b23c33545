"""``mosctl``: administer the local node — status, block, noblock, expel, bring.

Exit codes: 0 done; 2 usage; 3 no daemon found or reachable; 4 wrong cluster key; 1 other
(for expel and bring: some tasks could not be moved; each is named).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mosrun.commands import client


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosctl", description="administer a mosix node")
    client.add_target_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="this node's state and the cluster's in brief")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("block", help="refuse new guest tasks on this node")
    sub.add_parser("noblock", help="accept guest tasks again")
    expel = sub.add_parser("expel", help="block this node and move every guest task away")
    expel.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    bring = sub.add_parser("bring", help="bring this node's own tasks back home")
    bring.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    return p


def move_all(conn: client.Connection, which: str, timeout: float) -> int:
    """Move this node's guests away (expel) or its own tasks home (bring) until none is left.

    A task that cannot move (no safe points, not yours) is named once and left where it is;
    moves that fail for passing reasons are retried. Returns the exit code.
    """
    me = conn.cluster_status()["node"]
    deadline = time.monotonic() + timeout
    stuck: dict[str, str] = {}
    while True:
        tasks = [t for t in conn.list_tasks()["tasks"] if t["state"] == "running"]
        if which == "expel":
            todo = [t for t in tasks if t["where"] == me and t["home"] != me]
        else:
            todo = [t for t in tasks if t["home"] == me and t["where"] not in (me, "")]
        todo = [t for t in todo if t["id"] not in stuck]
        if not todo:
            break
        if time.monotonic() > deadline:
            for t in todo:
                stuck[t["id"]] = "not moved before the timeout"
            break
        for t in todo:
            result = conn.migrate(t["id"], "balance" if which == "expel" else "home")
            if result["ok"]:
                print(result["message"])
            elif "cannot move" in result["message"] or "only the owner" in result["message"]:
                stuck[t["id"]] = result["message"]
        time.sleep(0.5)
    for task_id, why in stuck.items():
        print(f"mosctl: {task_id} stays: {why}", file=sys.stderr)
    return 1 if stuck else 0


def _summary(nodes: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"up": 0, "blocked": 0, "suspect": 0, "down": 0, "left": 0}
    for node in nodes:
        counts[node["state"]] = counts.get(node["state"], 0) + 1
    return counts


def format_status(snap: dict[str, Any]) -> str:
    """Plain text for ``mosctl status``."""
    me = snap["nodes"][0]
    counts = _summary(snap["nodes"])
    mem_used = (me["mem_total"] - me["mem_free"]) / 2**30
    return "\n".join([
        f"node {me['id']} at {me['address']}: {me['state']}",
        f"  load {me['load']:.2f}  cpus {me['cpus']}  speed {me['speed']:.2f}  "
        f"memory {mem_used:.1f}/{me['mem_total'] / 2**30:.1f} GiB used  tasks {me['tasks']}",
        f"  cluster: {len(snap['nodes'])} node(s) known, {counts['up']} up, {counts['blocked']} blocked, "
        f"{counts['suspect']} suspect, {counts['down']} down, {counts['left']} left",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with client.open(args) as conn:
            if args.command == "status":
                snap = conn.cluster_status()
                if args.json:
                    print(json.dumps({"node": snap["nodes"][0], "cluster": _summary(snap["nodes"]),
                                      "nodes": snap["nodes"], "tables": snap.get("tables", {})}))
                else:
                    print(format_status(snap))
            elif args.command == "expel":
                conn.set_blocked(True)  # no new guests while the old ones leave
                return move_all(conn, "expel", args.timeout)
            elif args.command == "bring":
                return move_all(conn, "bring", args.timeout)
            else:
                node = conn.set_blocked(args.command == "block")
                print(f"node {node['id']}: {node['state']}")
    except client.ClientError as exc:
        print(f"mosctl: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
