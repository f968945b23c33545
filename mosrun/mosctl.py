"""``mosctl``: administer the local node — status, block, noblock.

Exit codes: 0 done; 2 usage; 3 no daemon found or reachable; 4 wrong cluster key; 1 other.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mosrun import client


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosctl", description="administer a mosix node")
    client.add_target_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="this node's state and the cluster's in brief")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("block", help="refuse new guest tasks on this node")
    sub.add_parser("noblock", help="accept guest tasks again")
    return p


def _summary(nodes: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"up": 0, "down": 0, "blocked": 0}
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
        f"{counts['down']} down",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with client.open(args) as conn:
            if args.command == "status":
                snap = conn.cluster_status()
                if args.json:
                    print(json.dumps({"node": snap["nodes"][0], "cluster": _summary(snap["nodes"]),
                                      "nodes": snap["nodes"]}))
                else:
                    print(format_status(snap))
            else:
                node = conn.set_blocked(args.command == "block")
                print(f"node {node['id']}: {node['state']}")
    except client.ClientError as exc:
        print(f"mosctl: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
