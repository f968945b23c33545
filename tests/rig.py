"""The separate-hosts rig: N mosix nodes on one machine, each a host of its own.

    python -m tests.rig up 4          # four hosts, a mosixd on each, link profile lan
    python -m tests.rig link wan      # switch the profile while the cluster runs
    python -m tests.rig partition n1 n3
    python -m tests.rig heal
    python -m tests.rig run n1 -- mosmon --once
    python -m tests.rig status
    python -m tests.rig down

Each node nK is

- a network namespace ``mxr-nK`` with one interface, ``eth0``, address 198.18.0.K/24, joined by
  a veth pair to a bridge in a namespace of its own (``mxr-hub``). No default route, and no link
  to the machine's own namespace: no packet can leave;
- a mount namespace with private ``/tmp``, ``/var/tmp``, ``/root`` and ``/home``, so that a node
  sees none of another's files; the interpreter, the virtualenv and this checkout stay visible,
  read-only, at their usual paths. ``/etc/hosts`` names the nodes n1..nN. The node's mosixd
  keeps its configuration, key, sockets and state in its own ``/tmp/mosix``.

Link profiles (``PROFILES``): the rate with ``tbf`` on each node's interface; latency and loss
with a packet relay on a TUN device that the route to the other nodes passes through
(``tests/relay.py``), since this kernel has no netem. Partitions are ``prohibit`` routes. The rig
measures its own path when it comes up, so that a profile's round trip is what a ping shows.

Everything the rig makes is named ``mxr-*`` or lives under ``/run/mosix-rig``; ``down``, and
every ``up`` first, remove all of it (processes, mounts, namespaces), also what a crashed run
left behind. Needs root, iproute2 and util-linux (``nsenter``, ``unshare``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RIG = Path(os.environ.get("MOSIX_RIG_DIR", "/run/mosix-rig"))
PREFIX = "mxr"
HUB = f"{PREFIX}-hub"
NET = "198.18.0"
PORT = 7410
BIN = Path(sys.executable).parent
HIDDEN = ("/tmp", "/var/tmp", "/root", "/home")
NODE_DIR = "/tmp/mosix"          # inside a node: its config, key, sockets and state
PROBE = ROOT / "tests" / "netprobe.py"
RELAY = ROOT / "tests" / "relay.py"
MAX_NODES = 200


@dataclass(frozen=True)
class Profile:
    """A link: rate (tbf syntax, None: unlimited), round trip in seconds, loss per packet."""

    rate: str | None
    rtt: float
    loss: float


PROFILES = {
    "raw": Profile(None, 0.0, 0.0),             # what veth and a bridge give: the rig's own path
    "lan": Profile("1gbit", 0.0002, 0.0),
    "wan": Profile("100mbit", 0.020, 0.001),
    "wan1": Profile("100mbit", 0.020, 0.01),    # a bad WAN: what gossip must survive
}


class RigError(Exception):
    """The rig cannot be made here; the message says why."""


def sh(argv: list[str], *, check: bool = True, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise RigError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def unavailable() -> str | None:
    """Why the rig cannot be made here, or None. Installs iproute2 where it is missing."""
    if os.geteuid() != 0:
        return "the separate-hosts rig needs root (network and mount namespaces)"
    if (shutil.which("ip") is None or shutil.which("tc") is None) and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "iproute2"]):
            subprocess.run(argv, capture_output=True, timeout=600, env=env)
    for tool in ("ip", "tc", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"the separate-hosts rig needs {tool} (iproute2, util-linux)"
    if not Path("/dev/net/tun").exists():
        return "the separate-hosts rig needs /dev/net/tun"
    return None


def clean() -> list[str]:
    """Remove whatever a rig left: processes in its namespaces, mounts, namespaces, files.
    Returns what was removed, for the record."""
    removed = []
    names = [n for n in sh(["ip", "netns", "list"], check=False).stdout.split() if n.startswith(f"{PREFIX}-")]
    for name in names:
        pids = sh(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if pids:
            removed.append(f"{len(pids)} process(es) in {name}")
    for mount in reversed(_rig_mounts()):
        sh(["umount", "-l", mount], check=False)
        removed.append(f"mount {mount}")
    for name in names:
        sh(["ip", "netns", "delete", name], check=False)
        removed.append(f"namespace {name}")
    if RIG.exists():
        shutil.rmtree(RIG, ignore_errors=True)
    return removed


def _rig_mounts() -> list[str]:
    """Mount points under the rig's directory, in the order they were made."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point == str(RIG) or point.startswith(f"{RIG}/"):
                points.append(point)
    return points


def leftovers() -> list[str]:
    """What of any rig is still there (namespaces, veths, mounts, processes): [] after ``down``."""
    names = [n for n in sh(["ip", "netns", "list"], check=False).stdout.split() if n.startswith(f"{PREFIX}-")]
    found = [f"namespace {n}" for n in names]
    found += [f"link {line.split(':')[1].strip()}" for line in sh(["ip", "-o", "link"], check=False).stdout.splitlines()
              if " vh-n" in line or f" {PREFIX}-" in line]
    found += [f"mount {m}" for m in _rig_mounts()]
    for name in names:
        found += [f"process {pid} in {name}" for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split()]
    markers = (str(RELAY).encode(), f"{NODE_DIR}/mosix.toml".encode())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            words = cmdline.split(bytes(1))
            found.append(f"process {pid}: {b' '.join(words).decode(errors='replace')[:80]}")
    return found


class HostsRig:
    """N separate hosts, with a mosixd on each (see the module docstring)."""

    def __init__(self, n: int) -> None:
        if not 1 <= n <= MAX_NODES:
            raise RigError(f"the rig takes 1..{MAX_NODES} nodes, got {n}")
        self.n = n
        self.nodes = [f"n{i}" for i in range(1, n + 1)]
        self.state: dict[str, object] = {"n": n, "profile": "raw", "base_rtt": 0.0, "partitions": [], "daemons": {}}

    # ---- naming ------------------------------------------------------------------------------

    @staticmethod
    def netns(node: str) -> str:
        return f"{PREFIX}-{node}"

    @staticmethod
    def address(node: str) -> str:
        return f"{NET}.{int(node[1:])}"

    @staticmethod
    def mount_ns(node: str) -> Path:
        return RIG / "mnt" / node

    @staticmethod
    def files(node: str) -> Path:
        return RIG / "nodes" / node

    def enter(self, node: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``node``: its network and mount namespaces."""
        return ["nsenter", f"--net=/run/netns/{self.netns(node)}", f"--mount={self.mount_ns(node)}", "--", *argv]

    def env(self, node: str) -> dict[str, str]:
        """What the mosix tools need in ``node`` to find its daemon and the key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSIX_")}
        env.update(MOSIX_NODE=f"{NODE_DIR}/mosixd.sock",
                   PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
        return env

    # ---- running things in nodes ---------------------------------------------------------------

    def run(self, node: str, argv: list[str], *, input: str | bytes | None = None, timeout: float = 120,
            cwd: str = "/", text: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``node``, from directory ``cwd`` there."""
        script = 'cd "$0" && exec "$@"'
        return subprocess.run(self.enter(node, ["sh", "-c", script, cwd, *argv]), input=input,
                              capture_output=True, text=text, timeout=timeout, env=self.env(node))

    def popen(self, node: str, argv: list[str], *, cwd: str = "/", text: bool = True,
              **kw: object) -> subprocess.Popen:
        script = 'cd "$0" && exec "$@"'
        return subprocess.Popen(self.enter(node, ["sh", "-c", script, cwd, *argv]), env=self.env(node),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, **kw)  # type: ignore[call-overload]

    def sh(self, node: str, script: str, **kw: object) -> subprocess.CompletedProcess:
        return self.run(node, ["sh", "-c", script], **kw)  # type: ignore[arg-type]

    def put(self, node: str, path: str, data: str | bytes) -> None:
        """Write a file in ``node`` (its directories made as needed)."""
        done = self.run(node, ["sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0"', path], input=data,
                        text=isinstance(data, str))
        if done.returncode != 0:
            raise RigError(f"cannot write {path} in {node}: {done.stderr}")

    # ---- up and down ---------------------------------------------------------------------------

    def up(self, profile: str = "lan", daemons: bool = True) -> None:
        """Make the hosts (after removing what any earlier rig left), then start their daemons."""
        if why := unavailable():
            raise RigError(why)
        clean()
        try:
            self._network()
            self._mounts()
            self._relays()
            self.state["base_rtt"] = self._measure_base()
            self.link(profile)
            if daemons:
                self._configure_daemons()
                for node in self.nodes:
                    self.start_daemon(node)
            self._save()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop everything and remove every trace of the rig."""
        clean()

    def _network(self) -> None:
        sh(["ip", "netns", "add", HUB])
        sh(["ip", "-n", HUB, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", HUB, "link", "set", "br0", "up"])
        sh(["ip", "-n", HUB, "link", "set", "lo", "up"])
        for node in self.nodes:
            ns = self.netns(node)
            sh(["ip", "netns", "add", ns])
            # Made in the hub and the node directly: the veth never exists in this namespace.
            sh(["ip", "-n", HUB, "link", "add", f"vh-{node}", "type", "veth", "peer", "name", "eth0", "netns", ns])
            sh(["ip", "-n", HUB, "link", "set", f"vh-{node}", "master", "br0", "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _keep(self) -> list[str]:
        """What every node must see, read-only: the interpreter, the virtualenv, this checkout."""
        wanted = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, ROOT)})
        return [p for p in wanted if not any(p.startswith(q + "/") for q in wanted if q != p)]

    def _mounts(self) -> None:
        (RIG / "mnt").mkdir(parents=True)
        # A persistent mount namespace is kept as a bind mount of its file, which must sit on a
        # private mount of its own.
        sh(["mount", "--bind", str(RIG / "mnt"), str(RIG / "mnt")])
        sh(["mount", "--make-private", str(RIG / "mnt")])
        hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(f"{self.address(n)} {n}\n" for n in self.nodes)
        keep = self._keep()
        for node in self.nodes:
            files = self.files(node)
            files.mkdir(parents=True)
            (files / "hosts").write_text(hosts)
            staging = RIG / "keep" / node
            for i in range(len(keep)):
                (staging / str(i)).mkdir(parents=True)
            self.mount_ns(node).touch()
            lines = ["set -e"]
            lines += [f"mount --bind '{p}' '{staging}/{i}'" for i, p in enumerate(keep)]
            lines += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
                      "mount -t tmpfs -o mode=0700 tmpfs /root", "mount -t tmpfs -o mode=0755 tmpfs /home"]
            for i, p in enumerate(keep):  # back at their places (in a hidden directory or not), read-only
                lines += [f"mkdir -p '{p}'", f"mount --bind '{staging}/{i}' '{p}'", f"mount -o remount,bind,ro '{p}'",
                          f"umount '{staging}/{i}'"]
            lines += [f"mount --bind '{files}/hosts' /etc/hosts", f"mkdir -p {NODE_DIR}/state"]
            sh(["nsenter", f"--net=/run/netns/{self.netns(node)}", "unshare", f"--mount={self.mount_ns(node)}",
                "--propagation", "private", "sh", "-c", "\n".join(lines)])

    def _relays(self) -> None:
        for node in self.nodes:
            config = self.files(node) / "link.json"
            config.write_text(json.dumps({"delay": 0.0, "loss": 0.0, "offload": True}))
            log = (self.files(node) / "relay.log").open("w")
            proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns(node)}", "--", sys.executable,
                                     str(RELAY), "lag0", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.state.setdefault("relays", {})[node] = proc.pid  # type: ignore[union-attr]
        for node in self.nodes:
            ns = self.netns(node)
            deadline = time.monotonic() + 10
            while sh(["ip", "-n", ns, "link", "show", "lag0"], check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RigError(f"the relay of {node} did not start: {(self.files(node) / 'relay.log').read_text()}")
                time.sleep(0.05)
            sysctl = ["nsenter", f"--net=/run/netns/{ns}", "sysctl", "-qw"]
            # The relay writes the packets back: forward them, although their source is ours.
            sh([*sysctl, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.lag0.rp_filter=0", "net.ipv4.conf.lag0.accept_local=1",
                "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"])
            sh(["ip", "-n", ns, "link", "set", "lag0", "up"])
            # What this node sends to another goes through the relay first (table 100); what
            # comes back from the relay, and everything received, takes the main table.
            sh(["ip", "-n", ns, "route", "add", f"{NET}.0/24", "dev", "lag0", "table", "100"])
            sh(["ip", "-n", ns, "rule", "add", "iif", "lo", "to", f"{NET}.0/24", "lookup", "100", "priority", "100"])

    def _measure_base(self) -> float:
        """The round trip of the rig's own path (veths, bridge, relays), with no delay added."""
        if self.n < 2:
            return 0.0
        rtts = self.ping("n1", "n2", 30, 0.005)["rtt"]
        return statistics.median(rtts) if rtts else 0.0

    # ---- links ---------------------------------------------------------------------------------

    def link(self, name: str) -> None:
        """Switch every link to profile ``name`` (see PROFILES); may be done while tasks run."""
        if name not in PROFILES:
            raise RigError(f"unknown link profile {name!r} (known: {', '.join(PROFILES)})")
        profile = PROFILES[name]
        # Each packet passes one relay: half the round trip each, less what the path costs anyway.
        delay = max(0.0, (profile.rtt - float(self.state["base_rtt"])) / 2)  # type: ignore[arg-type]
        for node in self.nodes:
            ns = self.netns(node)
            sh(["tc", "-n", ns, "qdisc", "del", "dev", "eth0", "root"], check=False)
            if profile.rate:
                sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", profile.rate,
                    "burst", "512kb", "latency", "100ms"])
            config = self.files(node) / "link.json"
            config.write_text(json.dumps({"delay": delay, "loss": profile.loss, "offload": not profile.loss}))
            os.kill(int(self.state["relays"][node]), signal.SIGHUP)  # type: ignore[index]
        self.state["profile"] = name
        self._save()

    def partition(self, a: str, b: str, silent: bool = False) -> None:
        """Cut the link between nodes ``a`` and ``b`` both ways: a prohibit route on each side
        (senders are told at once), or with ``silent`` a blackhole (packets vanish, as on a
        pulled cable: only a timeout tells)."""
        kind = "blackhole" if silent else "prohibit"
        for src, dst in ((a, b), (b, a)):
            sh(["ip", "-n", self.netns(src), "route", "replace", kind, f"{self.address(dst)}/32", "table", "100"])
        self.state["partitions"].append([a, b])  # type: ignore[union-attr]
        self._save()

    def heal(self) -> None:
        """Remove every partition."""
        for node in self.nodes:
            for other in self.nodes:
                for kind in ("prohibit", "blackhole"):
                    sh(["ip", "-n", self.netns(node), "route", "del", kind, f"{self.address(other)}/32",
                        "table", "100"], check=False)
        self.state["partitions"] = []
        self._save()

    def ping(self, src: str, dst: str, count: int = 20, interval: float = 0.02) -> dict:
        """ICMP round trips from ``src`` to ``dst`` (see tests/netprobe.py)."""
        done = sh(["nsenter", f"--net=/run/netns/{self.netns(src)}", "--", sys.executable, str(PROBE), "ping",
                   self.address(dst), str(count), str(interval)], timeout=count * (interval + 1) + 30)
        return json.loads(done.stdout)

    def stream(self, src: str, dst: str, megabytes: int, port: int = 5001) -> float:
        """Bytes per second of one plain TCP stream from ``src`` to ``dst``."""
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns(dst)}", "--", sys.executable,
                                   str(PROBE), "serve", str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            done = sh(["nsenter", f"--net=/run/netns/{self.netns(src)}", "--", sys.executable, str(PROBE), "stream",
                       self.address(dst), str(port), str(megabytes)], timeout=600)
            result = json.loads(done.stdout)
            return result["bytes"] / result["seconds"]
        finally:
            server.wait(timeout=30)

    # ---- mosix daemons -------------------------------------------------------------------------

    def _configure_daemons(self) -> None:
        # The nodes listen on a network: they prove who they are with certificates of one CA.
        from mosixd.wire.tls import init_ca, issue

        ca = RIG / "ca"
        shutil.rmtree(ca, ignore_errors=True)
        init_ca(ca, "mosix hosts rig CA")
        for node in self.nodes:
            files = issue(ca, node, ca, [node])
            self.put(node, f"{NODE_DIR}/tls/ca.crt", files.ca.read_bytes())
            self.put(node, f"{NODE_DIR}/tls/node.crt", files.cert.read_bytes())
            self.put(node, f"{NODE_DIR}/tls/node.key", files.key.read_bytes())
            self.sh(node, f"chmod 600 {NODE_DIR}/tls/node.key")
        for node in self.nodes:
            peers = json.dumps([f"{p}:{PORT}" for p in self.nodes if p != node])
            config = "\n".join([
                "[node]", f'id = "{node}"', f'listen = "{self.address(node)}:{PORT}"',
                f'advertise = "{node}:{PORT}"', f"peers = {peers}", f'socket = "{NODE_DIR}/mosixd.sock"',
                f'state_dir = "{NODE_DIR}/state"',
                "[load]", 'source = "tasks"', "speed = 1.0", "cpus = 1",
                "[security]", "run_as_root = true",  # the rig's tasks are root's
                "[tls]", f'ca = "{NODE_DIR}/tls/ca.crt"', f'cert = "{NODE_DIR}/tls/node.crt"',
                f'key = "{NODE_DIR}/tls/node.key"', ""])
            self.put(node, f"{NODE_DIR}/mosix.toml", config)

    def start_daemon(self, node: str, *flags: str) -> int:
        """Start ``node``'s mosixd (again); returns its pid."""
        log = (self.files(node) / "mosixd.log").open("ab")
        proc = subprocess.Popen(self.enter(node, [str(BIN / "mosixd"), "--config", f"{NODE_DIR}/mosix.toml", *flags]),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env(node))
        self.state["daemons"][node] = proc.pid  # type: ignore[index]
        self._save()
        return proc.pid

    def daemon_pid(self, node: str) -> int:
        return int(self.state["daemons"][node])  # type: ignore[index]

    def log(self, node: str) -> str:
        return (self.files(node) / "mosixd.log").read_text(errors="replace")

    def view(self, node: str) -> dict[str, str] | None:
        """Node id -> state as ``node`` sees the cluster (None if its daemon does not answer)."""
        done = self.run(node, ["mosmon", "--json"], timeout=20)
        if done.returncode != 0:
            return None
        return {n["id"]: n["state"] for n in json.loads(done.stdout)["nodes"]}

    def converged(self) -> bool:
        want = dict.fromkeys(self.nodes, "up")
        return all(self.view(n) == want for n in self.nodes)

    # ---- state, for the command line ---------------------------------------------------------

    def _save(self) -> None:
        RIG.mkdir(parents=True, exist_ok=True)
        (RIG / "state.json").write_text(json.dumps(self.state))

    @classmethod
    def load(cls) -> "HostsRig":
        try:
            state = json.loads((RIG / "state.json").read_text())
        except (OSError, ValueError):
            raise RigError("no rig is up (python -m tests.rig up N)") from None
        rig = cls(int(state["n"]))
        rig.state = state
        return rig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rig", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make N hosts with a mosixd each")
    up.add_argument("n", type=int)
    up.add_argument("--profile", default="lan", choices=list(PROFILES))
    up.add_argument("--no-daemons", action="store_true", help="only the hosts and their links")
    sub.add_parser("down", help="remove the rig, and whatever a crashed one left")
    link = sub.add_parser("link", help="switch the link profile")
    link.add_argument("profile", choices=list(PROFILES))
    part = sub.add_parser("partition", help="cut the link between two nodes")
    part.add_argument("a")
    part.add_argument("b")
    sub.add_parser("heal", help="remove every partition")
    run = sub.add_parser("run", help="run a command in a node")
    run.add_argument("node")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="what is up")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            rig = HostsRig(args.n)
            rig.up(args.profile, daemons=not args.no_daemons)
            print(f"{args.n} hosts up, link {args.profile}; base round trip "
                  f"{float(rig.state['base_rtt']) * 1e3:.3f} ms")  # type: ignore[arg-type]
        elif args.command == "down":
            for what in clean():
                print("removed", what)
        elif args.command == "status":
            rig = HostsRig.load()
            print(json.dumps(rig.state, indent=2))
            for node in rig.nodes:
                print(node, rig.view(node) if rig.state.get("daemons") else "")
        else:
            rig = HostsRig.load()
            if args.command == "link":
                rig.link(args.profile)
            elif args.command == "partition":
                rig.partition(args.a, args.b)
            elif args.command == "heal":
                rig.heal()
            elif args.command == "run":
                argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
                return subprocess.call(rig.enter(args.node, argv), env=rig.env(args.node))
    except RigError as exc:
        print(f"rig: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
