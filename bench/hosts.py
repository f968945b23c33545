"""Figures over a real link: mosix on the separate-hosts rig against the raw link it runs on.

For each link profile (``lan``: 1 Gbit/s, 0.2 ms round trip; ``wan``: 100 Mbit/s, 20 ms, 0.1%
loss), in the same run, the raw link first: a ping and a plain TCP stream between two nodes'
namespaces. Then, with the user's mosrun on n1 and the task on n2, every figure as a ratio to it:

  launch      ``mosrun -r n2 python -c pass``           goal: python start + 4 RTT at most
  stdout      a task's stdout, 1 GB (256 MB on wan)     goal: 0.9x the raw stream
  files       proxied sequential write and read, 256 MB goal: 0.8x (lan), 0.6x (wan) the raw stream
  stat        one proxied os.stat                       goal: 1.5 RTT at most
  freeze      a move of a task with 256 MB of state     goal: 0.3 s at lan; also with 10% of the
              state rewritten each second (pre-copy rounds and bytes sent reported)
  gossip      16 nodes: a change known to 99% of them, and a killed node down everywhere (wan:
              with 1% loss)

Needs root (the rig is made of namespaces); without it, says so and exits 0.

    python -m bench.hosts [--runs 5] [--profiles lan,wan] [--skip gossip]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import textwrap
import time
from typing import Any

from tests.rig import PROFILES, HostsRig, RigError, unavailable

WORK = "/home/user/bench"
PY = sys.executable

DRIVER = """
import json, os, statistics, subprocess, sys, time
py, what, n = sys.executable, sys.argv[1], int(sys.argv[2])

def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start

if what == "launch":
    base = statistics.median(timed([py, "-c", "pass"]) for _ in range(n))
    launch = statistics.median(timed(["mosrun", "-r", "n2", py, "-c", "pass"]) for _ in range(n))
    print(json.dumps({"python": base, "launch": launch}))
elif what == "stdout":
    mb = int(sys.argv[3])
    rates = []
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.Popen(["mosrun", "-r", "n2", py, "writer.py", str(mb)], stdout=subprocess.PIPE)
        got = 0
        while block := proc.stdout.read(1 << 20):
            got += len(block)
        assert proc.wait() == 0 and got == mb << 20, got
        rates.append(got / (time.perf_counter() - start))
    print(json.dumps({"rate": statistics.median(rates)}))
elif what in ("files", "stat"):
    runs = [json.loads(subprocess.run(["mosrun", "-r", "n2", py, f"{what}.py", *sys.argv[3:]], check=True,
                                      capture_output=True).stdout) for _ in range(n)]
    print(json.dumps({k: statistics.median(r[k] for r in runs) for k in runs[0]}))
"""

WRITER = """
import sys
block = bytes(1 << 20)
for _ in range(int(sys.argv[1])):
    sys.stdout.buffer.write(block)
"""

FILES = """
import json, os, sys, time
mb, block = int(sys.argv[1]), bytes(1 << 20)
start = time.perf_counter()
with open("bench.dat", "wb") as f:
    for _ in range(mb):
        f.write(block)
write = time.perf_counter() - start
start, got = time.perf_counter(), 0
with open("bench.dat", "rb") as f:
    while data := f.read(1 << 20):
        got += len(data)
read = time.perf_counter() - start
os.remove("bench.dat")
assert got == mb << 20
print(json.dumps({"write": got / write, "read": got / read}))
"""

STAT = """
import json, os, sys, time
open("probe.txt", "w").close()
samples = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    os.stat("probe.txt")
    samples.append(time.perf_counter() - start)
os.remove("probe.txt")
samples.sort()
print(json.dumps({"stat": samples[len(samples) // 2]}))
"""

HOLDER = """
import os, sys, time
from mosrun import resumable, safepoint
size, rewrite = int(sys.argv[1]) << 20, float(sys.argv[2])  # rewrite: fraction of the state per second
state = resumable(blob=None, step=0)
if state.blob is None:
    state.blob = bytearray(size)
block, chunk, owed = bytes(range(256)) * 4096, 1 << 20, 0.0
while True:
    start = time.perf_counter()
    owed += rewrite * size / 10  # a tenth of a second's share of the rewrites
    while owed >= chunk:  # a chunk rewritten with new content: the step number leads it
        at = (state.step * 7919 % (size // chunk)) * chunk
        state.blob[at:at + chunk] = block
        state.blob[at:at + 8] = state.step.to_bytes(8, "little")
        state.step += 1
        owed -= chunk
    time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))
    safepoint()
"""

WATCHER = """
import json, math, sys, threading, time
from mosrun.commands.client import Connection, Target
from pathlib import Path
nodes, subject, wanted = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tls = (Path("/tmp/mosix/tls/ca.crt"), Path("/tmp/mosix/tls/node.crt"), Path("/tmp/mosix/tls/node.key"))
conns = {f"n{i}": Connection(Target(f"n{i}:7410", Path("/nonexistent"), f"n{i}", tls))
         for i in range(1, nodes + 1) if f"n{i}" != subject}
seen, lock = {}, threading.Lock()
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()

def watch(name, conn):
    while time.monotonic() - start < 300:
        try:
            states = {n["id"]: n["state"] for n in conn.cluster_status()["nodes"]}
        except Exception:
            states = {}
        if states.get(subject) == wanted:
            with lock:
                seen[name] = time.monotonic() - start
            return
        time.sleep(0.05)

threads = [threading.Thread(target=watch, args=item) for item in conns.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
times = sorted(seen.values())
print(json.dumps({"seen": len(times), "of": len(conns), "p99": times[math.ceil(0.99 * len(conns)) - 1]
                  if len(times) >= 0.99 * len(conns) else None, "all": times[-1] if len(times) == len(conns) else None}))
"""


def job(rig: HostsRig, what: str, *args: object, timeout: float = 1800) -> dict[str, Any]:
    done = rig.run("n1", [PY, "driver.py", what, *map(str, args)], cwd=WORK, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{what}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def raw_link(rig: HostsRig, megabytes: int) -> dict[str, float]:
    rtt = statistics.median(rig.ping("n1", "n2", 50, 0.01)["rtt"])
    return {"rtt": rtt, "n2->n1": rig.stream("n2", "n1", megabytes), "n1->n2": rig.stream("n1", "n2", megabytes)}


def freeze(rig: HostsRig, megabytes: int, rewrite: float, runs: int) -> dict[str, float]:
    """Median freeze of moves n2 -> n3 -> n2 ... of a task holding ``megabytes`` MB."""
    proc = rig.popen("n1", ["mosrun", "-r", "n2", PY, "holder.py", str(megabytes), str(rewrite)], cwd=WORK)
    try:
        task = None
        deadline = time.monotonic() + 60
        while task is None and time.monotonic() < deadline:
            listing = json.loads(rig.run("n1", ["mosps", "--json"]).stdout)["tasks"]
            task = next((t for t in listing if t["state"] == "running" and t["rss"] > megabytes << 19), None)
            time.sleep(0.5)
        if task is None:
            raise RuntimeError("the holder did not start")
        replies, where = [], "n2"
        for _ in range(runs):
            where = "n3" if where == "n2" else "n2"
            reply = json.loads(rig.run("n1", ["migrate", "--json", task["id"], where], timeout=600).stdout)
            if not reply["ok"]:
                raise RuntimeError(reply["message"])
            replies.append(reply)
            time.sleep(2)
        return {key: statistics.median(float(r.get(key, 0)) for r in replies)
                for key in ("freeze_seconds", "state_bytes", "precopy_bytes", "precopy_rounds")}
    finally:
        proc.kill()
        rig.sh("n1", "pkill -f holder.py || true")


def gossip(profile: str, nodes: int = 16) -> dict[str, Any]:
    rig = HostsRig(nodes)
    try:
        rig.up(profile)
        deadline = time.monotonic() + 120
        while not rig.converged():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{nodes} nodes did not converge at {profile}")
            time.sleep(1)
        rig.put("n1", f"{WORK}/watch.py", textwrap.dedent(WATCHER))
        result = {}
        for event, subject, wanted in (("change", "n5", "blocked"), ("death", "n6", "down")):
            watcher = rig.popen("n1", [PY, "watch.py", str(nodes), subject, wanted], cwd=WORK, stdin=-1)
            assert watcher.stdout is not None and watcher.stdout.readline().strip() == "ready"
            if event == "change":
                rig.run(subject, ["mosctl", "block"])
            else:
                os.kill(rig.daemon_pid(subject), signal.SIGKILL)
            out, _ = watcher.communicate("go\n", timeout=400)
            result[event] = json.loads(out)
        return result
    finally:
        rig.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profiles", default="lan,wan")
    parser.add_argument("--skip", default="", help="comma-separated: launch,stdout,files,stat,freeze,gossip")
    args = parser.parse_args()
    if why := unavailable():
        print(f"bench.hosts: {why}; nothing measured")
        return 0
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict[str, Any]] = {}
    rig = HostsRig(3)
    try:
        rig.up("lan")
        for name, text in (("driver.py", DRIVER), ("writer.py", WRITER), ("files.py", FILES), ("stat.py", STAT),
                           ("holder.py", HOLDER)):
            rig.put("n1", f"{WORK}/{name}", textwrap.dedent(text))
        for profile in args.profiles.split(","):
            rig.link(profile)
            wan = PROFILES[profile].rate == "100mbit"
            out = {"raw": raw_link(rig, 64 if wan else 512)}
            if "launch" not in skip:
                out["launch"] = job(rig, "launch", args.runs)
            if "stdout" not in skip:
                out["stdout"] = job(rig, "stdout", max(1, args.runs // 2), 256 if wan else 1024)
            if "files" not in skip:
                out["files"] = job(rig, "files", max(1, args.runs // 2), 256)
            if "stat" not in skip:
                out["stat"] = job(rig, "stat", 3, 200)
            if "freeze" not in skip:
                out["freeze"] = freeze(rig, 256, 0.0, max(1, args.runs // 2))
                out["freeze_rewriting"] = freeze(rig, 256, 0.1, max(1, args.runs // 2))
            results[profile] = out
    except RigError as exc:
        print(f"bench.hosts: {exc}; nothing more measured")
    finally:
        rig.down()
    if "gossip" not in skip:
        for profile in args.profiles.split(","):
            results.setdefault(profile, {})["gossip"] = gossip("wan1" if profile == "wan" else profile)
    report(results)
    return 0


def report(results: dict[str, dict[str, Any]]) -> None:
    for profile, out in results.items():
        raw = out.get("raw")
        print(f"\n== {profile} ==")
        if raw:
            rtt, down, up = raw["rtt"], raw["n2->n1"], raw["n1->n2"]
            print(f"  raw link: ping {rtt * 1e3:.3f} ms; TCP n2->n1 {down * 8 / 1e6:.0f} Mbit/s, "
                  f"n1->n2 {up * 8 / 1e6:.0f} Mbit/s")
        if "launch" in out:
            launch, py = out["launch"]["launch"], out["launch"]["python"]
            print(f"  launch: {launch * 1e3:.1f} ms = python start {py * 1e3:.1f} ms + "
                  f"{(launch - py) / rtt:.1f} RTT (goal <= 4)")
        if "stdout" in out:
            print(f"  stdout: {out['stdout']['rate'] * 8 / 1e6:.0f} Mbit/s = {out['stdout']['rate'] / down:.2f}x raw "
                  "(goal >= 0.9)")
        if "files" in out:
            f = out["files"]
            print(f"  files: write {f['write'] * 8 / 1e6:.0f} Mbit/s = {f['write'] / down:.2f}x raw, "
                  f"read {f['read'] * 8 / 1e6:.0f} Mbit/s = {f['read'] / up:.2f}x raw")
        if "stat" in out:
            print(f"  stat: {out['stat']['stat'] * 1e3:.3f} ms = {out['stat']['stat'] / rtt:.2f} RTT (goal <= 1.5)")
        for key, label in (("freeze", "idle state"), ("freeze_rewriting", "10% rewritten per second")):
            if key in out:
                fr = out[key]
                print(f"  freeze, 256 MB, {label}: {fr['freeze_seconds'] * 1e3:.0f} ms; pre-copy "
                      f"{fr['precopy_bytes'] / 2**20:.0f} MiB in {fr['precopy_rounds']:.0f} round(s)")
        if "gossip" in out:
            for event, g in out["gossip"].items():
                p99 = f"{g['p99']:.2f} s" if g["p99"] is not None else "not reached"
                every = f"{g['all']:.2f} s" if g["all"] is not None else f"{g['seen']} of {g['of']}"
                print(f"  gossip, 16 nodes, {event}: 99% in {p99}, all in {every}")


if __name__ == "__main__":
    sys.exit(main())
