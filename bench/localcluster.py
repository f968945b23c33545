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
