"""``mosixd ca``: the cluster's certificate authority, on the command line.

    mosixd ca init  [--dir DIR]                       a new CA: DIR/ca.crt and DIR/ca.key (0600)
    mosixd ca issue NODE [--dir DIR] [--out DIR] [--name HOST]...
                                                      NODE's certificate and key, signed by it

Keep the CA key off the nodes: issue on one machine, then copy ``ca.crt``, ``NODE.crt`` and
``NODE.key`` (root's alone, mode 0600) to each node's ``/etc/mosix/tls``.

Exit codes: 0 done; 1 the files cannot be made (one line says why); 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mosixd.wire.names import node_id_problem
from mosixd.wire.tls import TlsError, init_ca, issue

DEFAULT_DIR = Path("/etc/mosix/ca")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mosixd ca", description="the cluster's certificate authority")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="make a new cluster CA")
    init.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the CA lives (default {DEFAULT_DIR})")
    node = commands.add_parser("issue", help="a node's certificate and key, signed by the CA")
    node.add_argument("node", help="the node id, as in its node.id")
    node.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the CA lives (default {DEFAULT_DIR})")
    node.add_argument("--out", type=Path, help="where to write NODE.crt and NODE.key (default: --dir)")
    node.add_argument("--name", action="append", default=[], help="a host name or address of the node (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            print(f"mosixd ca: made {init_ca(args.dir)} (its key beside it, mode 0600)")
            return 0
        if problem := node_id_problem(args.node):
            print(f"mosixd ca: {problem}", file=sys.stderr)
            return 2
        files = issue(args.dir, args.node, args.out or args.dir, args.name)
        print(f"mosixd ca: made {files.cert} and {files.key} (mode 0600) for node {args.node}")
        return 0
    except (TlsError, OSError) as exc:
        print(f"mosixd ca: {exc}", file=sys.stderr)
        return 1
