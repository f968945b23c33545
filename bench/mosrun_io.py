"""What running through the home node costs: mosrun against the same thing done locally.

On a real 3-node ``mosixd --local`` cluster, with tasks placed on n2 and the user's mosrun on
n1, it measures, each as a ratio against a baseline taken in the same run (medians):

  launch      ``mosrun -r n2 python -c pass``  vs  ``python -c pass``          goal <= 6x
  stdout      bytes/s of a task's stdout through the home proxy vs a local pipe  goal >= 0.3x
  file write  256 MB written to a relative path through the file proxy vs local  goal >= 0.3x
  file read   the same file read back                                           goal >= 0.3x
  stat        one proxied os.stat vs one gRPC unary ping of a daemon            goal <= 2x

The file figures come twice, the same script run locally and under mosrun each time:

  page cache  write, then read back at once: the data never leaves memory, so the local
              baseline is memcpy speed
  disk        write then ``os.fsync``; then home evicts the file from its page cache
              (``posix_fadvise(DONTNEED)``, done by this driver for both runs alike) before it
              is read back: the data really goes to and comes from the disk on both sides

    python -m bench.mosrun_io [--runs 15] [--megabytes 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.localcluster import LocalCluster

BIN = Path(sys.executable).parent

WRITER = """
import sys, time
chunk = b"x" * (1 << 20)
out = sys.stdout.buffer
for _ in range({mb}):
    out.write(chunk)
out.flush()
"""

FILE_JOB = """
import json, os, sys, time
chunk = os.urandom(1 << 20)
start = time.perf_counter()
with open("bench.dat", "wb") as f:
    for _ in range({mb}):
        f.write(chunk)
    {sync}
write = time.perf_counter() - start
{pause}
start = time.perf_counter()
total = 0
with open("bench.dat", "rb") as f:
    while block := f.read(1 << 20):
        total += len(block)
read = time.perf_counter() - start
os.remove("bench.dat")
assert total == {mb} << 20
print(json.dumps({{"write": {mb} / write, "read": {mb} / read}}))
"""


def file_job(mb: int, disk: bool) -> str:
    """The file script: page cache (write, read back), or disk (write and fsync, then wait
    while home evicts the file from its page cache, then read)."""
    if not disk:
        return FILE_JOB.format(mb=mb, sync="pass", pause="")
    return FILE_JOB.format(mb=mb, sync="f.flush(); os.fsync(f)",
                           pause='print("written", flush=True)\nsys.stdin.readline()')


STAT = """
import json, os, time
open("probe.txt", "w").close()
samples = []
for _ in range({n}):
    t = time.perf_counter()
    os.stat("probe.txt")
    samples.append(time.perf_counter() - t)
os.remove("probe.txt")
samples.sort()
print(json.dumps({{"median_us": samples[len(samples) // 2] * 1e6}}))
"""


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def throughput(cmd: list[str], env: dict[str, str], cwd: Path, megabytes: int) -> float:
    """MB/s of what ``cmd`` writes to its stdout, read here from a pipe."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    while block := proc.stdout.read(1 << 20):
        total += len(block)
    proc.wait()
    assert total == megabytes << 20, total
    return megabytes / (time.perf_counter() - start)


def evict(path: Path) -> None:
    """Drop a file from this machine's page cache, so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # DONTNEED leaves dirty pages; the writer synced them already anyway
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_rates(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run the disk file script: write and fsync, evict the file here (at home), then read it."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"written\n", line
    evict(cwd / "bench.dat")
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait() == 0
    return json.loads(out)


def grpc_ping_us(env: dict[str, str], runtime: Path, n: int) -> float:
    """Median round trip of a unary gRPC call (the health check) to node n2."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    registry = json.loads((runtime / "local.json").read_text())
    address = next(node["address"] for node in registry["nodes"] if node["id"] == "n2")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mosix-bench-"))
    runtime = work / "runtime"
    with LocalCluster(3, runtime) as cluster:
        env = cluster.env
        (work / "writer.py").write_text(WRITER.format(mb=args.megabytes * 2))
        (work / "files.py").write_text(file_job(args.megabytes, disk=False))
        (work / "disk.py").write_text(file_job(args.megabytes, disk=True))
        (work / "stat.py").write_text(STAT.format(n=2000))
        py = sys.executable
        mosrun = [str(BIN / "mosrun"), "-r", "n2"]
        rows = []

        local = statistics.median(timed([py, "-c", "pass"], env, work) for _ in range(args.runs))
        remote = statistics.median(timed([*mosrun, py, "-c", "pass"], env, work) for _ in range(args.runs))
        rows.append(("launch (s)", local, remote, remote / local, "<= 6x"))

        runs = max(3, min(args.runs, 5))
        local = statistics.median(throughput([py, "writer.py"], env, work, args.megabytes * 2) for _ in range(runs))
        remote = statistics.median(throughput([*mosrun, py, "writer.py"], env, work, args.megabytes * 2)
                                   for _ in range(runs))
        rows.append(("stdout (MB/s)", local, remote, remote / local, ">= 0.3x"))

        def file_rates(cmd: list[str]) -> dict[str, float]:
            return json.loads(subprocess.run(cmd, env=env, cwd=work, check=True, capture_output=True).stdout)

        # Alternated, so that both sides see the same background load.
        local_f, remote_f, local_d, remote_d = [], [], [], []
        for _ in range(runs):
            local_f.append(file_rates([py, "files.py"]))
            remote_f.append(file_rates([*mosrun, py, "files.py"]))
            local_d.append(disk_rates([py, "disk.py"], env, work))
            remote_d.append(disk_rates([*mosrun, py, "disk.py"], env, work))
        for label, local_r, remote_r in (("cache", local_f, remote_f), ("disk", local_d, remote_d)):
            for kind in ("write", "read"):
                a = statistics.median(r[kind] for r in local_r)
                b = statistics.median(r[kind] for r in remote_r)
                rows.append((f"file {kind}, {label} (MB/s)", a, b, b / a, ">= 0.3x"))

        ping = statistics.median(grpc_ping_us(env, runtime, 2000) for _ in range(3))
        stat = statistics.median(
            json.loads(subprocess.run([*mosrun, py, "stat.py"], env=env, cwd=work, check=True,
                                      capture_output=True).stdout)["median_us"] for _ in range(3))
        rows.append(("stat vs grpc ping (us)", ping, stat, stat / ping, "<= 2x"))
    print(f"mosrun through the home node, 3-node local cluster, task on n2 "
          f"({args.runs} launches, {runs} runs of each bulk figure, medians)")
    print(f"  {'figure':<28} {'baseline':>10} {'mosrun':>10} {'ratio':>8}  goal")
    for name, base, ours, ratio, goal in rows:
        print(f"  {name:<28} {base:>10.4g} {ours:>10.4g} {ratio:>7.2f}x  {goal}")


if __name__ == "__main__":
    main()
