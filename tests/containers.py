"""Docker for the compose and systemd suites: the engine, the base image, the wheelhouse.

- :class:`Engine` installs Debian's ``docker.io`` and ``docker-compose`` with apt-get where they
  are missing, starts ``dockerd`` when none runs and stops it afterwards. It gives containers
  addresses from the benchmarking range 198.18.0.0/15 only, and touches neither the host's
  packet filter nor its IP forwarding (``--iptables=false --ip-forward=false``), so containers
  reach each other and nothing else; what is left of it (its bridge) goes with it.
- :meth:`Engine.base_image` is ``python:3.11-slim`` where that image is there or can be pulled,
  else an image built from the distribution with ``docker/local-base.sh``, kept between runs.
- :func:`wheelhouse` makes the wheels the project image installs from: its build needs no
  network.

Where the engine cannot run (not root, no kernel support, no package), :class:`Unavailable`
says why, and the suites skip with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOCKET = Path("/var/run/docker.sock")
BRIDGE_IP = "198.19.0.1/24"                      # docker0
ADDRESS_POOL = "base=198.19.128.0/17,size=24"    # every network the engine makes itself
REGISTRY_BASE = "python:3.11-slim"
LOCAL_BASE = "local/mosix-base:bookworm"
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}
START_TIMEOUT = 30.0


class Unavailable(Exception):
    """Docker cannot run here; the message says why (the suites skip with it)."""


def run(argv: list[str], *, timeout: float = 120, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """A command, its output captured as text; CalledProcessError carries both streams."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done


def docker_cli() -> str:
    """The docker client: Debian's, which matches its engine, before any other on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


class Engine:
    """A Docker engine for the length of a test session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None  # ours to stop, if we started it
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{SOCKET}")

    def start(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("the compose and systemd suites need root (to run dockerd)")
        self._install()
        if self._answers():
            return  # an engine already runs here: use it, leave it running
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--bip", BRIDGE_IP, "--default-address-pool", ADDRESS_POOL,
             "--iptables=false", "--ip-forward=false", "--pidfile", str(self.workdir / "dockerd.pid")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.workdir / "dockerd.log").read_text(errors="replace").strip().splitlines()[-3:]
                self.proc = None
                raise Unavailable(f"dockerd did not start: {' | '.join(tail)}")
            if self._answers():
                return
            time.sleep(0.3)
        self.stop()
        raise Unavailable(f"dockerd did not answer within {START_TIMEOUT:g} s")

    def stop(self) -> None:
        """Stop the engine if this session started it, and remove the bridge it left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if Path("/sys/class/net/docker0").exists():
            run(["ip", "link", "delete", "docker0"], check=False)

    def _answers(self) -> bool:
        if not SOCKET.exists():
            return False
        return run([docker_cli(), "version", "--format", "{{.Server.Version}}"], check=False,
                   timeout=10, env=self.env).returncode == 0

    def _install(self) -> None:
        missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
        if not missing:
            return
        if shutil.which("apt-get") is None:
            raise Unavailable(f"{', '.join(missing)} missing and no apt-get to install them")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # The package would start an engine of its own, with Docker's default addresses and
        # packet filter rules: a policy-rc.d that says no (exit 101) keeps it from doing so.
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\n# no service starts while the test suite installs packages\nexit 101\n")
            policy.chmod(0o755)
        try:
            run(["apt-get", "update", "-qq"], timeout=300, env=env)
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], timeout=600, env=env)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            stderr = getattr(exc, "stderr", "") or ""
            raise Unavailable(f"cannot install {', '.join(missing)}: {stderr.strip()[-200:]}") from None
        finally:
            if ours:
                policy.unlink(missing_ok=True)

    # ---- images --------------------------------------------------------------------------------

    def has_image(self, name: str) -> bool:
        return run([docker_cli(), "image", "inspect", name], check=False, timeout=30, env=self.env).returncode == 0

    def base_image(self) -> str:
        """The image the project image is built on: ``python:3.11-slim`` if it is here or can
        be pulled, else the base built from the distribution."""
        if self.has_image(REGISTRY_BASE) or self._pulled(REGISTRY_BASE):
            return REGISTRY_BASE
        return self.local_base()

    def _pulled(self, name: str) -> bool:
        try:
            return run([docker_cli(), "pull", "-q", name], check=False, timeout=120, env=self.env).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def local_base(self) -> str:
        """The base built from the distribution (it has systemd), made once and kept."""
        if not self.has_image(LOCAL_BASE):
            try:
                run([str(ROOT / "docker" / "local-base.sh"), LOCAL_BASE], timeout=900, env=self.env)
            except subprocess.CalledProcessError as exc:
                raise Unavailable(f"cannot build a base image from the distribution: "
                                  f"{exc.stderr.strip()[-300:]}") from None
        return LOCAL_BASE


def wheelhouse() -> Path:
    """``pip wheel . -w wheels``: the project and its dependencies, for an offline image build."""
    target = ROOT / "wheels"
    for old in target.glob("mosix-*.whl"):
        old.unlink()  # the project's own wheel is made afresh each time
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", str(ROOT), "-w", str(target)],
        timeout=600, cwd=ROOT)
    return target


# ---- docker-compose.yml as users run it --------------------------------------------------------

PROJECT = "mosixtest"
SUBNET = "198.19.200.0/24"
NODES = ("n1", "n2", "n3")

OVERRIDE = f"""\
# The test's own network: a fixed subnet in the benchmarking range, internal (no way out).
networks:
  mosix:
    internal: true
    ipam:
      config:
        - subnet: {SUBNET}
secrets:
{{secrets}}
"""


class Compose:
    """``docker-compose.yml`` under a project name of its own, with :data:`OVERRIDE` and fresh
    certificates made as README says (``mosixd ca``): ``compose("up", "-d")`` runs
    docker-compose, ``sh("n1", ...)`` a command in a node."""

    def __init__(self, engine: Engine, tmp: Path, base: str) -> None:
        tls, override = tmp / "tls", tmp / "override.yml"
        run([sys.executable, "-m", "mosixd", "ca", "init", "--dir", str(tls)])
        for node in NODES:
            run([sys.executable, "-m", "mosixd", "ca", "issue", node, "--dir", str(tls)])
        files = {"tls_ca": tls / "ca.crt", **{f"{n}_{kind}": tls / f"{n}.{'crt' if kind == 'cert' else 'key'}"
                                              for n in NODES for kind in ("cert", "key")}}
        secrets = "\n".join(f"  {name}:\n    file: {path}" for name, path in files.items())
        override.write_text(OVERRIDE.format(secrets=secrets))
        self.files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(override)]
        self.env = dict(engine.env, MOSIX_BASE=base)

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker-compose", "-p", PROJECT, *self.files, *args], timeout=timeout, check=check,
                   env=self.env, cwd=ROOT)

    def argv(self, node: str, *cmd: str, user: str | None = None) -> list[str]:
        """``docker exec`` of ``cmd`` in ``node`` (faster than docker-compose exec)."""
        return [docker_cli(), "exec", "-i", *(["-u", user] if user else []), f"{PROJECT}_{node}_1", *cmd]

    def sh(self, node: str, script: str, *, user: str | None = None, input: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(node, "sh", "-c", script, user=user), input=input, capture_output=True,
                              text=True, timeout=timeout, env=self.env)

    def put(self, node: str, path: str, text: str) -> None:
        done = self.sh(node, f'mkdir -p "$(dirname {path})" && cat > {path}', input=textwrap.dedent(text))
        if done.returncode != 0:
            raise RuntimeError(f"cannot write {path} on {node}: {done.stderr.strip()}")

    def status(self, node: str) -> dict[str, str]:
        done = self.sh(node, "mosmon --json", timeout=20)
        if done.returncode != 0:
            return {}
        return {n["id"]: n["state"] for n in json.loads(done.stdout)["nodes"]}

    def converged(self) -> bool:
        return all(self.status(n) == dict.fromkeys(NODES, "up") for n in NODES)

    def tasks(self) -> list[dict]:
        done = self.sh("n1", "mosps --json", timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"mosps on n1: {done.stderr.strip()}")
        return json.loads(done.stdout)["tasks"]

    def leftovers(self) -> list[str]:
        """Containers, networks, volumes and images of the project that are still there."""
        label = f"label=com.docker.compose.project={PROJECT}"
        found = []
        for kind in ("container", "network", "volume"):
            listing = run([docker_cli(), kind, "ls", *(["-a"] if kind == "container" else []), "-q",
                           "--filter", label], env=self.env, check=False).stdout.split()
            found += [f"{kind} {name}" for name in listing]
        images = run([docker_cli(), "image", "ls", "-q", "--filter", f"reference={PROJECT}_*"], env=self.env).stdout
        return found + [f"image {i}" for i in images.split()]
