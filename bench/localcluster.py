"""A real ``mosixd --local N`` cluster for a benchmark: started, waited for, stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


class LocalCluster:
    """``mosixd --local n`` with its own runtime directory; returns once all ``n`` nodes are up.

    ``env`` is what clients need to find it. Use it as a context manager, or call ``stop``.
    """

    def __init__(self, n: int, runtime: Path, *flags: str, port: int = 0, timeout: float = 60.0) -> None:
        self.env = dict(os.environ, MOSIX_RUNTIME_DIR=str(runtime))
        self.proc = subprocess.Popen([str(BIN / "mosixd"), "--local", str(n), "--port", str(port), *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([str(BIN / "mosmon"), "--json"], capture_output=True, text=True, env=self.env)
            if out.returncode == 0 and sum(node["state"] == "up" for node in json.loads(out.stdout)["nodes"]) == n:
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the {n}-node local cluster did not come up within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ClusterWatch:
    """Asks every node of a running local cluster, over gRPC and in parallel, how it sees
    the cluster: far quicker than one ``mosmon`` process per node, so that a change can be
    timed to a tenth of a second on dozens of nodes."""

    def __init__(self, runtime: Path) -> None:
        from mosixd.wire import mosix_pb2_grpc as rpc
        from mosixd.wire.auth import open_channel
        from mosixd.wire.tls import TlsFiles, load

        registry = json.loads((runtime / "local.json").read_text())
        tls = load(TlsFiles(*(Path(registry["tls"][k]) for k in ("ca", "cert", "key"))))
        self.nodes: dict[str, dict[str, Any]] = {n["id"]: n for n in registry["nodes"]}
        self._channels = {i: open_channel(n["address"], None, tls=tls, expect=i) for i, n in self.nodes.items()}
        self._stubs = {i: rpc.AdminStub(c) for i, c in self._channels.items()}

    def views(self, ids: list[str] | None = None, timeout: float = 2.0) -> dict[str, dict[str, str] | None]:
        """For each node asked, node id -> state as it sees them (None: it did not answer)."""
        from mosixd.wire import mosix_pb2 as pb

        asked = ids if ids is not None else list(self.nodes)
        calls = {i: self._stubs[i].ClusterStatus.future(pb.ClusterStatusRequest(), timeout=timeout) for i in asked}
        out: dict[str, dict[str, str] | None] = {}
        for i, call in calls.items():
            try:
                out[i] = {n.id: n.state for n in call.result().nodes}
            except Exception:  # a node that is down or busy answers nothing
                out[i] = None
        return out

    def all_see(self, node: str, state: str, observers: list[str]) -> bool:
        """Whether every observer answers and sees ``node`` in ``state``."""
        return all(v is not None and v.get(node) == state for v in self.views(observers).values())

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
