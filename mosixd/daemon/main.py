"""``mosixd``: run one node daemon, or ``mosixd --local N`` for an N-node cluster on this host;
``mosixd ca ...`` manages the cluster's certificates (``mosixd.daemon.ca``).

Exit codes: 0 clean stop; 1 cannot start (port in use, socket taken, state dir unusable);
2 bad configuration, flags, key or certificate files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from mosixd.settings.config import Config, ConfigError, load_config
from mosixd.wire.auth import KeyFileError, load_key
from mosixd.wire.names import node_id_problem
from mosixd.wire.tls import TlsCredentials, TlsError, TlsFiles
from mosixd.wire.tls import load as load_tls
from mosrun.runtime import netaddr

EXIT_START = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The mosixd command line; every node flag overrides the matching config-file key."""
    p = argparse.ArgumentParser(prog="mosixd", description="mosix node daemon")
    p.add_argument("--config", type=Path, help="TOML config file (default /etc/mosix/mosix.toml if present)")
    p.add_argument("--id", dest="node_id", help="node id (default: host name)")
    p.add_argument("--listen", help="HOST:PORT for peers (default 0.0.0.0:7410)")
    p.add_argument("--advertise", help="HOST:PORT peers use to reach this node")
    p.add_argument("--socket", help="Unix socket for local clients (default /run/mosix/mosixd.sock)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/mosix)")
    p.add_argument("--key-file", help="cluster key file (default /etc/mosix/cluster.key)")
    p.add_argument("--peers", help="comma-separated HOST:PORT of peers to join through")
    p.add_argument("--load-source", help="host (whole machine) or tasks (only this node's tasks)")
    p.add_argument("--cpus", type=int, help="CPUs to report (default: detect)")
    p.add_argument("--cpuset", help="comma-separated CPU numbers the node's tasks are pinned to")
    p.add_argument("--speed", type=float, help="speed relative to the standard CPU (default: calibrate)")
    p.add_argument("--gossip-interval", type=float, help="seconds between gossip rounds (default 1)")
    p.add_argument("--window", type=int, help="gossip entries per exchange (default 20)")
    p.add_argument("--down-after", type=float, help="seconds a suspect node keeps failing probes before it is declared down (default 2)")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument("--no-balance", dest="balance", action="store_const", const=False, default=None,
                   help="never move tasks automatically (manual migrate still works)")
    p.add_argument("--leave-timeout", type=float,
                   help="on SIGTERM, seconds to move guest tasks away before stopping (default 60)")
    p.add_argument("--max-sessions", type=int, help="mosrun sessions open at once, all users (default 4096)")
    p.add_argument("--max-sessions-per-user", type=int, help="mosrun sessions open at once per user (default 512)")
    p.add_argument("--launch-timeout", type=float,
                   help="seconds a new mosrun session has to send its launch request (default 10)")
    p.add_argument("--admin-group", help="members may block this node and see and move every task (default: root only)")
    p.add_argument("--tls-ca", help="the cluster CA's certificate (mosixd ca init)")
    p.add_argument("--tls-cert", help="this node's certificate (mosixd ca issue NODE)")
    p.add_argument("--tls-key", help="this node's key (mode 0600)")
    p.add_argument("--insecure", action="store_const", const=True, default=None,
                   help="listen on a non-loopback address without TLS (cluster key only)")
    p.add_argument("--run-as-root", action="store_const", const=True, default=None,
                   help="run tasks of root here (default: refused)")
    p.add_argument("--deny-users", help="comma-separated users whose tasks are never run here")
    p.add_argument("--homes", help="comma-separated node ids that may start tasks here (default: any)")
    p.add_argument("--max-guest-tasks", type=int, help="tasks of other homes run here at once (default 0: no limit)")
    p.add_argument("--max-tasks-per-user", type=int, help="tasks of one user run here at once (default 0: no limit)")
    p.add_argument("--checkpoint-mb", type=int, help="largest checkpoint kept at home for mosrun -A (default 4096)")
    p.add_argument("--home-restart", type=float, help="seconds a task and its mosrun wait for a restarted home "
                                                      "daemon (default 60)")
    p.add_argument("--metrics", dest="metrics_listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (default: none)")
    p.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio event loop")
    p.add_argument("--local", type=int, metavar="N", help="run an N-node local cluster on 127.0.1.1..N")
    p.add_argument("--port", type=int, default=None, help="with --local: the port every node listens on (default 7410; 0 picks a free one)")
    p.add_argument("--names", metavar="DOMAIN", default=None,
                   help="with --local: nodes are known by the names nK.DOMAIN, which must resolve to 127.0.1.K")
    return p


_OVERRIDES = ("node_id", "listen", "advertise", "socket", "state_dir", "key_file", "peers", "load_source",
              "cpus", "cpuset", "speed", "gossip_interval", "window", "down_after", "log_level", "balance",
              "leave_timeout", "max_sessions", "max_sessions_per_user", "launch_timeout",
              "admin_group", "tls_ca", "tls_cert", "tls_key", "insecure",
              "metrics_listen", "run_as_root", "deny_users", "homes",
              "max_guest_tasks", "max_tasks_per_user", "checkpoint_mb", "home_restart")


def setup_logging(level: str, name: str) -> None:
    # Under systemd the journal stamps each line itself (it sets JOURNAL_STREAM).
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"{stamp}mosixd[{name}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def node_credentials(config: Config) -> tuple[bytes | None, TlsCredentials | None]:
    """The node's TLS material when the config names it, else its cluster key. Without TLS a
    node listens on loopback only, unless ``insecure`` says the network may be trusted."""
    if config.tls_ca and config.tls_cert and config.tls_key:
        tls = load_tls(TlsFiles(config.tls_ca, config.tls_cert, config.tls_key))
        return None, tls
    host, _ = netaddr.split(config.listen)
    if not config.insecure and not netaddr.is_loopback(host):
        raise ConfigError(f"node.listen: {config.listen} is not a loopback address, and no TLS is set: give the "
                          "node a certificate (mosixd ca issue; tls.ca, tls.cert, tls.key) or set "
                          "security.insecure = true (--insecure)")
    return load_key(config.key_file), None


async def serve(config_path: Path | None, overrides: dict[str, object]) -> int:
    """Run one node until SIGTERM/SIGINT; returns the exit code."""
    from mosixd.daemon.node import NodeDaemon, StartupError, next_generation

    config = load_config(config_path, overrides)
    if problem := node_id_problem(config.node_id):
        raise ConfigError(f"node.id: {problem}")  # peers would refuse its every message
    setup_logging(config.log_level, config.node_id)
    key, tls = node_credentials(config)
    try:
        generation = next_generation(config.state_dir)
        node = NodeDaemon(config, key, tls=tls, generation=generation)
        await node.start()
    except StartupError as exc:
        print(f"mosixd: {exc}", file=sys.stderr)
        return EXIT_START
    loop = asyncio.get_running_loop()
    # The first signal is a graceful leave (guests move away first); a second stops at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.shutdown)
    await node.wait_stopped()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ca"]:
        from mosixd.daemon import ca

        return ca.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.local is not None:
        from mosixd.daemon.local import run_local

        return run_local(args)
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    try:
        coro = serve(args.config, overrides)
        if args.no_uvloop:
            return asyncio.run(coro)
        import uvloop

        return uvloop.run(coro)
    except ConfigError as exc:
        print(f"mosixd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (KeyFileError, TlsError) as exc:
        print(f"mosixd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
