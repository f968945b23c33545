"""``migrate TASK {NODE|home|balance}``: move a running task.

The task keeps running where it was if the move cannot be made; the message says why.
Exit codes: 0 moved (or already there); 1 not moved; 2 usage; 3 no daemon; 4 wrong cluster key.
"""

from __future__ import annotations

import argparse
import json
import sys

from mosrun.commands import client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="migrate", description="move a running mosix task")
    client.add_target_options(parser)
    parser.add_argument("task", help="the task id, as mosps shows it")
    parser.add_argument("where", help="a node id, 'home' (its home node) or 'balance' (the best other node)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        with client.open(args) as conn:
            result = conn.migrate(args.task, args.where)
    except client.ClientError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(result))
    elif result["ok"]:
        print(result["message"])
    else:
        print(f"migrate: {result['message']}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
