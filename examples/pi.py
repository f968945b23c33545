"""Estimate pi by Monte Carlo: a small CPU-bound job to run with mosrun.

    mosrun --local 3 python examples/pi.py [--samples N]

It prints its progress as it goes and writes out/pi.json relative to the working directory:
under mosrun both appear on the home node, wherever the job ran.
"""

import argparse
import json
import os
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--samples", type=int, default=2_000_000)
args = parser.parse_args()

rng = random.Random(2026)
inside = 0
step = max(1, args.samples // 4)
for i in range(1, args.samples + 1):
    x, y = rng.random(), rng.random()
    inside += x * x + y * y <= 1.0
    if i % step == 0:
        print(f"{i:>10} samples: pi ~ {4 * inside / i:.6f}", flush=True)

estimate = 4 * inside / args.samples
os.makedirs("out", exist_ok=True)
with open("out/pi.json", "w") as f:
    json.dump({"samples": args.samples, "pi": estimate}, f)
where = os.environ.get("MOSIX_NODE", "this machine, without mosix")
print(f"pi ~ {estimate:.6f}, written to out/pi.json (computed on {where})")
