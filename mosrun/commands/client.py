"""How the command-line tools find and talk to their mosixd.

The daemon is found by ``--node ADDR``, then ``$MOSIX_NODE``, then the system socket
``/run/mosix/mosixd.sock``, then this user's running ``mosixd --local`` cluster. ADDR is
``HOST:PORT``, ``unix:PATH``, a socket path, or a node id (``n2``) of the local cluster.

A local daemon is asked over its tools socket, where the kernel tells it who the user is:
users hold no credential. Only ``HOST:PORT`` speaks gRPC, as a node: with a node certificate
(the local cluster's, else the system config's ``[tls]``) or, given ``--key``, with the cluster
key: from ``--key``, then ``$MOSIX_KEY_FILE``, then the system config's key file. That is for
operators (root).

Exit codes of the tools for these failures: 3 no daemon found or reachable, 4 refused
(wrong cluster key, or not allowed for this user), 1 anything else the daemon reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SYSTEM_SOCKET = Path("/run/mosix/mosixd.sock")
SYSTEM_CONFIG = Path("/etc/mosix/mosix.toml")
SYSTEM_KEY = Path("/etc/mosix/cluster.key")

EXIT_ERROR = 1
EXIT_NO_DAEMON = 3
EXIT_REFUSED = 4
CALL_TIMEOUT = 5.0
MIGRATE_TIMEOUT = 900.0  # a big state pre-copied over a slow link takes its time


class ClientError(Exception):
    """A one-line failure for the user, with the exit code the tool should use."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Target:
    """A daemon to talk to: the gRPC target string and the key file that opens it, or the
    node certificate (ca, cert, key) that does when the cluster speaks TLS."""

    grpc_target: str
    key_file: Path
    label: str
    tls: tuple[Path, Path, Path] | None = None


def _tls_files(registry: dict[str, Any] | None) -> tuple[Path, Path, Path] | None:
    """A node certificate to speak to a port with: the local cluster's, else this host's."""
    if registry and isinstance(registry.get("tls"), dict):
        tls = registry["tls"]
        return Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"])
    try:
        from mosixd.settings.config import read_toml

        section = read_toml(SYSTEM_CONFIG).get("tls", {})
        return Path(section["ca"]), Path(section["cert"]), Path(section["key"])
    except Exception:  # no or unreadable system config, or no [tls] in it: the cluster key
        return None


def add_target_options(parser: argparse.ArgumentParser, *, local: bool = False) -> None:
    """Add --node and --key (and --local N for tools that can bring up a cluster)."""
    parser.add_argument("--node", metavar="ADDR", help="daemon to ask: HOST:PORT, unix:PATH or a local node id")
    parser.add_argument("--key", metavar="FILE", type=Path, help="cluster key file")
    if local:
        parser.add_argument("--local", metavar="N", type=int,
                            help="bring up an ephemeral N-node local cluster if none is running")


def _system_key() -> Path:
    try:
        from mosixd.settings.config import read_toml

        return Path(read_toml(SYSTEM_CONFIG).get("key_file", SYSTEM_KEY))
    except Exception:  # no or unreadable system config: the documented default
        return SYSTEM_KEY


def local_registry() -> dict[str, Any] | None:
    """This user's running local cluster, or None; a planted runtime directory is refused."""
    from mosixd.settings.registry import UntrustedRuntimeDir, read_registry

    try:
        return read_registry()
    except UntrustedRuntimeDir as exc:
        raise ClientError(str(exc), EXIT_NO_DAEMON) from None


def resolve(node: str | None, key: Path | None) -> Target:
    """Find the daemon and its key, following the order in the module docstring."""
    from mosixd.settings.registry import find_local_node, present

    registry = local_registry()
    node = node or os.environ.get("MOSIX_NODE") or None
    key = key or (Path(os.environ["MOSIX_KEY_FILE"]) if os.environ.get("MOSIX_KEY_FILE") else None)
    if node:
        if entry := find_local_node(node, registry):
            return Target(f"unix:{entry['socket']}", key or SYSTEM_KEY, entry["id"])
        if node.startswith("unix:"):
            return Target(node, key or _system_key(), node)
        if "/" in node:
            return Target(f"unix:{node}", key or _system_key(), node)
        if ":" not in node:
            raise ClientError(f"unknown node {node!r}: not HOST:PORT, unix:PATH, or a node of a running local cluster",
                              EXIT_NO_DAEMON)
        # A port speaks to nodes: with a certificate if this host has one, else the key.
        return Target(node, key or _system_key(), node, None if key else _tls_files(registry))
    if present(SYSTEM_SOCKET):
        return Target(f"unix:{SYSTEM_SOCKET}", key or _system_key(), "this host")
    if registry and registry.get("nodes"):
        first = registry["nodes"][0]
        return Target(f"unix:{first['socket']}", key or SYSTEM_KEY, first["id"])
    raise ClientError(
        "no mosixd found: no --node, no $MOSIX_NODE, no /run/mosix/mosixd.sock and no running local "
        "cluster (start one with: mosixd --local 3)", EXIT_NO_DAEMON)


class _ToolsSocket:
    """The local daemon's tools socket: the kernel tells it who we are; no key is needed."""

    def __init__(self, path: str, label: str) -> None:
        from mosixd.settings.registry import present

        self.label, self._path = label, path
        if present(path) and not os.access(path, os.R_OK | os.W_OK):
            raise ClientError(f"{path}: permission denied", EXIT_NO_DAEMON)
        self._sock = self._connect()

    def _connect(self) -> Any:
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CALL_TIMEOUT)
        try:
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            raise ClientError(f"cannot reach mosixd at {self._path} ({exc.strerror or exc})", EXIT_NO_DAEMON) from None
        return sock

    def _ask(self, request: dict[str, Any], timeout: float) -> Any:
        from mosrun.runtime import frames

        self._sock.settimeout(timeout)
        frames.send_frame(self._sock, request)
        return frames.recv_frame(self._sock)

    def call(self, op: str, args: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        from mosrun.runtime import frames

        request = {"t": "call", "op": op, "args": args}
        try:
            try:
                frame = self._ask(request, timeout)
            except (BrokenPipeError, ConnectionResetError):
                frame = None
            if frame is None and op in ("status", "tasks"):
                # The daemon closed an idle connection (or restarted): ask once more. Only
                # questions are asked again; a move or a block is never sent twice.
                self._sock.close()
                self._sock = self._connect()
                frame = self._ask(request, timeout)
        except (OSError, frames.ProtocolError) as exc:
            raise ClientError(f"{self.label}: the daemon did not answer ({exc})", EXIT_NO_DAEMON) from None
        if frame is None:
            raise ClientError(f"{self.label}: the daemon closed the connection", EXIT_NO_DAEMON)
        header = frame[0]
        if header.get("t") == "reply" and isinstance(header.get("result"), dict):
            return header["result"]
        code = EXIT_REFUSED if header.get("code") == "refused" else EXIT_ERROR
        raise ClientError(f"{self.label}: {header.get('message', 'malformed answer')}", code)

    def close(self) -> None:
        self._sock.close()


class _GrpcAdmin:
    """A daemon's gRPC port, for operators who hold the cluster key (another machine's node)."""

    def __init__(self, target: Target) -> None:
        import grpc

        from mosixd.wire import mosix_pb2_grpc as rpc
        from mosixd.wire.auth import KeyFileError, load_key, open_channel
        from mosixd.wire.tls import TlsError, TlsFiles
        from mosixd.wire.tls import load as load_tls

        try:
            if target.tls is not None:
                tls = load_tls(TlsFiles(*target.tls))
                self._channel = open_channel(target.grpc_target, None, tls=tls)
            else:
                self._channel = open_channel(target.grpc_target, load_key(target.key_file))
        except (KeyFileError, TlsError) as exc:
            raise ClientError(str(exc), EXIT_REFUSED) from None
        self.target = target
        self._grpc = grpc
        self._admin = rpc.AdminStub(self._channel)

    def call(self, op: str, args: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        from mosixd.wire import codec
        from mosixd.wire import mosix_pb2 as pb

        try:
            if op == "status":
                reply = self._admin.ClusterStatus(pb.ClusterStatusRequest(), timeout=timeout)
                return {"node": reply.node_id, "nodes": [codec.node_status_to_dict(n) for n in reply.nodes],
                        "tables": dict(sorted(reply.tables.items()))}
            if op == "tasks":
                reply = self._admin.ListTasks(pb.ListTasksRequest(), timeout=timeout)
                return {"node": reply.node_id, "tasks": [codec.task_info_to_dict(t) for t in reply.tasks],
                        "others": 0}
            if op == "migrate":
                # A key holder speaks as a node: it may move any task.
                request = pb.MigrateRequest(task_id=args["task"], target=args["target"], uid=0)
                return codec.migrate_reply_to_dict(self._admin.Migrate(request, timeout=timeout))
            blocked = pb.SetBlockedRequest(blocked=bool(args["blocked"]))
            return codec.node_status_to_dict(self._admin.SetBlocked(blocked, timeout=timeout))
        except self._grpc.RpcError as exc:
            raise _client_error(exc, self.target) from None

    def close(self) -> None:
        self._channel.close()


class Connection:
    """A blocking connection to one daemon: its tools socket (``unix:``), where the kernel
    says who the user is, or its gRPC port with the cluster key (``HOST:PORT``)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        if target.grpc_target.startswith("unix:"):
            self._api: _ToolsSocket | _GrpcAdmin = _ToolsSocket(target.grpc_target[5:], target.label)
        else:
            self._api = _GrpcAdmin(target)

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cluster_status(self) -> dict[str, Any]:
        """The answering node's view: {"node": id, "nodes": [node dicts, self first], "tables": {name:
        entries in the daemon's own tables}}."""
        return self._api.call("status", {})

    def list_tasks(self) -> dict[str, Any]:
        """mosps: {"node": id, "tasks": [task dicts], "others": tasks of other users not shown}."""
        return self._api.call("tasks", {})

    def migrate(self, task_id: str, target: str) -> dict[str, Any]:
        """Ask for a move; returns {"ok", "message", "node", "freeze_seconds", "state_bytes",
        "transfer_seconds", "precopy_bytes", "precopy_rounds"}."""
        return self._api.call("migrate", {"task": task_id, "target": target}, timeout=MIGRATE_TIMEOUT)

    def set_blocked(self, blocked: bool) -> dict[str, Any]:
        """Block or unblock the answering node; returns its node dict."""
        return self._api.call("block", {"blocked": blocked})


def _client_error(exc: Any, target: Target) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else None
    name = getattr(code, "name", "")
    if name == "UNAUTHENTICATED":
        return ClientError(f"{target.label} refused the cluster key in {target.key_file}", EXIT_REFUSED)
    if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        # A TLS port refuses a client without a certificate of its CA in the handshake, which
        # gRPC reports as unavailable too: say which credentials were tried.
        tried = f"certificate {target.tls[1]}" if target.tls else f"key {target.key_file}"
        return ClientError(f"cannot reach mosixd at {target.grpc_target} ({name.lower()}; tried with {tried})",
                           EXIT_NO_DAEMON)
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ClientError(f"{target.label}: {details}", EXIT_ERROR)


@contextlib.contextmanager
def open(args: argparse.Namespace) -> Iterator[Connection]:  # noqa: A001 - reads as client.open
    """Connect as the parsed options say; with --local N, bring up an ephemeral cluster if needed."""
    local = getattr(args, "local", None)
    node = args.node
    with contextlib.ExitStack() as stack:
        if local and not node and not os.environ.get("MOSIX_NODE"):
            if local_registry() is None:
                stack.enter_context(ephemeral_cluster(local))
            node = "n1"  # the local cluster, even where a system daemon also runs
        conn = stack.enter_context(Connection(resolve(node, args.key)))
        yield conn


@contextlib.contextmanager
def ephemeral_cluster(n: int, timeout: float = 30.0) -> Iterator[None]:
    """Run ``mosixd --local n`` for the duration of the block, once all n nodes are up."""
    if n < 1:
        raise ClientError(f"--local takes a positive number of nodes, got {n}", 2)
    # The nodes' logs go to a file: an unread pipe would block them once full.
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "mosixd", "--local", str(n), "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                errors.seek(0)
                err = errors.read().decode(errors="replace").strip().splitlines()
                raise ClientError(f"local cluster did not start: {err[-1] if err else 'exit ' + str(proc.returncode)}")
            if local_registry() is not None and _all_up(n):
                break
            time.sleep(0.2)
        else:
            raise ClientError(f"local cluster of {n} nodes did not converge within {timeout:.0f}s")
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errors.close()


def _all_up(n: int) -> bool:
    try:
        with Connection(resolve("n1", None)) as conn:
            nodes = conn.cluster_status()["nodes"]
    except ClientError:
        return False
    return sum(1 for node in nodes if node["state"] == "up") >= n
