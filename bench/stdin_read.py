"""What the counted stdin of a task (``mosrun.runtime.stdin``) costs against Python's own.

Each round feeds the same lines through a pipe to a fresh interpreter that reads them one of
three ways (``for line in sys.stdin``, ``sys.stdin.read()``, ``sys.stdin.buffer.read(64 KiB)``
in a loop), once with Python's ``sys.stdin`` and once with the runtime's; the ratio of their
times is printed, median over the rounds.

    python -m bench.stdin_read [--mb 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

READERS = {
    "lines": "n = 0\nfor line in sys.stdin:\n    n += len(line)\n",
    "read()": "n = len(sys.stdin.read())\n",
    "buffer 64K": "n = 0\nwhile chunk := sys.stdin.buffer.read(65536):\n    n += len(chunk)\n",
}
SETUP = {"python": "import sys\n", "counted": "import sys\nfrom mosrun.runtime import stdin\nstdin.install()\n"}


def _seconds(code: str, payload: bytes) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], input=payload, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    line = b"%07d some words of a line\n"
    payload = b"".join(line % i for i in range(args.mb * (1 << 20) // len(line % 0)))
    lines = payload.count(b"\n")
    print(f"{len(payload) >> 20} MiB in {lines} lines, {args.rounds} rounds (medians)")
    print(f"{'reader':<12} {'python s':>9} {'counted s':>10} {'ratio':>6}")
    for name, body in READERS.items():
        times: dict[str, list[float]] = {"python": [], "counted": []}
        for _ in range(args.rounds):
            for kind in ("python", "counted"):  # interleaved: both see the same machine
                times[kind].append(_seconds(SETUP[kind] + body, payload))
        plain, counted = statistics.median(times["python"]), statistics.median(times["counted"])
        print(f"{name:<12} {plain:>9.3f} {counted:>10.3f} {counted / plain:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
