"""``mosixd --local N``: N real node processes on 127.0.1.1..N, supervised by this process.

Each node gets its own state directory, Unix socket and config file (so a node that was
killed can be restarted by hand with ``mosixd --config <dir>/nK/mosix.toml``), a share of the
CPUs, and the ``tasks`` load source, because the nodes share one host. The cluster is
described in a registry file that clients read to find it without flags.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosixd.settings.config import DEFAULT_PORT
from mosixd.settings.registry import REGISTRY, UntrustedRuntimeDir, read_registry, runtime_dir
from mosixd.wire.tls import TlsFiles, init_ca, issue

MAX_LOCAL_NODES = 254


@dataclass(frozen=True, slots=True)
class NodePlan:
    """How one node of a local cluster is started."""

    id: str
    host: str
    port: int
    peers: tuple[str, ...]
    load_source: str = "tasks"
    name: str = ""  # the DNS name peers reach it by; "" for its address

    @property
    def address(self) -> str:
        """Where it listens."""
        return f"{self.host}:{self.port}"

    @property
    def advertise(self) -> str:
        """Where peers reach it: by name if it has one."""
        return f"{self.name or self.host}:{self.port}"

    def argv(self, *, state_dir: str, tls: tuple[str, str, str], socket: str) -> list[str]:
        """The per-node mosixd flags; ``tls``: the CA's certificate, the node's and its key."""
        return ["--id", self.id, "--listen", self.address, *(["--advertise", self.advertise] if self.name else []),
                "--peers", ",".join(self.peers), "--load-source", self.load_source, "--state-dir", state_dir,
                "--tls-ca", tls[0], "--tls-cert", tls[1], "--tls-key", tls[2], "--socket", socket, "--run-as-root"]


def plan_cluster(n: int, port: int = DEFAULT_PORT, domain: str | None = None) -> list[NodePlan]:
    """Nodes n1..nN on 127.0.1.1..N, each told about all the others; with a ``domain``, known by
    the names nK.DOMAIN (which must resolve to 127.0.1.K) instead of their addresses."""
    hosts = [f"127.0.1.{i}" for i in range(1, n + 1)]
    names = [f"n{i}.{domain}" if domain else "" for i in range(1, n + 1)]
    reach = [name or host for name, host in zip(names, hosts)]
    return [
        NodePlan(id=f"n{i}", host=hosts[i - 1], port=port, name=names[i - 1],
                 peers=tuple(f"{r}:{port}" for r in reach if r != reach[i - 1]))
        for i in range(1, n + 1)
    ]


def _die_with_parent() -> None:
    """In a node process: get SIGTERM if the supervisor dies, even by kill -9 (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _check_free(plans: list[NodePlan]) -> str | None:
    for plan in plans:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Like the gRPC server itself: TIME-WAIT leftovers of a previous run are no conflict.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((plan.host, plan.port))
            except OSError as exc:
                return f"cannot use {plan.address} for {plan.id}: {exc.strerror}"
    return None


def _free_common_port(n: int, tries: int = 50) -> int:
    """A port free on all of 127.0.1.1..n (for clusters whose port does not matter)."""
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind(("127.0.1.1", 0))
            port = probe.getsockname()[1]
        if _check_free(plan_cluster(n, port)) is None:
            return port
    return DEFAULT_PORT


def cpuset_for(index: int, n: int, host_cpus: int) -> tuple[int, ...]:
    """The host CPUs of local node ``index`` (0-based) of ``n``: each node its own share."""
    if n >= host_cpus:
        return (index % host_cpus,)
    return tuple(range(index, host_cpus, n))


def _write_node_config(path: Path, plan: NodePlan, *, state_dir: Path, sock: Path, tls: TlsFiles,
                       cpus: int, cpuset: tuple[int, ...], speed: float, extra: dict[str, Any]) -> None:
    lines = [
        "[node]", f'id = "{plan.id}"', f'listen = "{plan.address}"', f'advertise = "{plan.advertise}"',
        f'socket = "{sock}"',
        f'state_dir = "{state_dir}"',
        "peers = [" + ", ".join(f'"{p}"' for p in plan.peers) + "]",
        *([f"leave_timeout = {extra['leave_timeout']}"] if extra.get("leave_timeout") is not None else []),
        "[load]", f'source = "{plan.load_source}"', f"cpus = {cpus}", f"speed = {speed:.4f}",
        "cpuset = [" + ", ".join(map(str, cpuset)) + "]",
        "[gossip]", *(f"{k} = {v}" for k, v in extra.items()
                      if v is not None and k not in ("balance", "leave_timeout")),
    ]
    if extra.get("balance") is False:
        lines += ["[policy]", "balance = false"]
    # The cluster belongs to the user who started it, root included: their tasks run.
    lines += ["[security]", "run_as_root = true"]
    lines += ["[tls]", f'ca = "{tls.ca}"', f'cert = "{tls.cert}"', f'key = "{tls.key}"']
    path.write_text("\n".join(lines) + "\n")


def run_local(args: argparse.Namespace) -> int:
    """Start the cluster, print it, wait for Ctrl-C/SIGTERM, stop every node. Exit code."""
    from mosixd.daemon.load import calibrate_speed, detect_cpus

    n, port = args.local, DEFAULT_PORT if args.port is None else args.port
    if not 1 <= n <= MAX_LOCAL_NODES:
        print(f"mosixd: --local takes 1..{MAX_LOCAL_NODES} nodes, got {n}", file=sys.stderr)
        return 2
    root = runtime_dir()
    try:
        running = read_registry(root)
    except UntrustedRuntimeDir as exc:
        print(f"mosixd: {exc}", file=sys.stderr)
        return 1
    if running:
        print(f"mosixd: a local cluster is already running (pid {running['pid']}, {root}); stop it first",
              file=sys.stderr)
        return 1
    if port == 0:
        port = _free_common_port(n)
    plans = plan_cluster(n, port, args.names)
    if problem := _check_free(plans):
        print(f"mosixd: {problem}", file=sys.stderr)
        return 1
    cluster_dir = root / "local"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    cluster_dir.mkdir(exist_ok=True)
    # A CA of its own, made afresh, and a certificate per node: nodes prove who they are.
    tls_dir = cluster_dir / "tls"
    shutil.rmtree(tls_dir, ignore_errors=True)
    init_ca(tls_dir, "mosix local cluster CA")
    certs = {plan.id: issue(tls_dir, plan.id, tls_dir, [plan.host, *([plan.name] if plan.name else [])])
             for plan in plans}
    speed = args.speed or calibrate_speed()  # once, not N times on a shared host
    extra = {"interval": args.gossip_interval, "window": args.window, "down_after": args.down_after,
             "balance": args.balance, "leave_timeout": args.leave_timeout}
    nodes: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    host_cpus = detect_cpus()
    for index, plan in enumerate(plans):
        node_dir = cluster_dir / plan.id
        node_dir.mkdir(exist_ok=True)
        sock, config = node_dir / "mosixd.sock", node_dir / "mosix.toml"
        _write_node_config(config, plan, state_dir=node_dir, sock=sock, tls=certs[plan.id],
                           cpus=args.cpus or len(cpuset_for(index, n, host_cpus)),
                           cpuset=cpuset_for(index, n, host_cpus), speed=speed, extra=extra)
        cmd = [sys.executable, "-m", "mosixd", "--config", str(config)]
        if args.log_level:
            cmd += ["--log-level", args.log_level]
        if args.no_uvloop:
            cmd.append("--no-uvloop")
        procs.append(subprocess.Popen(cmd, preexec_fn=_die_with_parent))
        nodes.append({"id": plan.id, "address": plan.advertise, "socket": str(sock),
                      "session": str(sock.with_name("mosrun.sock")), "pid": procs[-1].pid,
                      "state_dir": str(node_dir), "config": str(config)})
    # The supervisor's user owns the whole cluster: its tools may speak to a port as n1 does.
    operator = certs[plans[0].id]
    registry = {"pid": os.getpid(), "port": port, "nodes": nodes,
                "tls": {"ca": str(operator.ca), "cert": str(operator.cert), "key": str(operator.key)}}
    registry_path = root / REGISTRY
    tmp = registry_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(registry, indent=2))
    os.replace(tmp, registry_path)
    print(f"mosix local cluster: {n} node(s), certificates in {tls_dir}", flush=True)
    for node in nodes:
        print(f"  {node['id']}  {node['address']}  pid {node['pid']}  socket {node['socket']}", flush=True)
    print("stop with Ctrl-C", flush=True)
    return _supervise(procs, nodes, registry_path)


def _supervise(procs: list[subprocess.Popen[bytes]], nodes: list[dict[str, Any]], registry: Path) -> int:
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reported: set[int] = set()
    try:
        while not stop:
            for proc, node in zip(procs, nodes):
                code = proc.poll()
                if code is not None and proc.pid not in reported:
                    reported.add(proc.pid)
                    print(f"mosixd: node {node['id']} exited with code {code}", file=sys.stderr, flush=True)
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5.0
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        registry.unlink(missing_ok=True)
    print("mosix local cluster stopped", flush=True)
    return 0
