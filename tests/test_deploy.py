"""Tests for the deployment files: docker-compose.yml, Dockerfile, the systemd unit
and the example configuration.

They check that these files agree with the daemon they deploy: every flag they pass
is one mosixd's argument parser accepts, the compose cluster is wired like the local
rig (`plan_cluster`), and the example TOML is accepted by the config loader.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "systemd" / "mosixd.service"
EXAMPLE_TOML = ROOT / "systemd" / "mosix.toml.example"
PYPROJECT = ROOT / "pyproject.toml"

NODE_IDS = ["n1", "n2", "n3"]
PORT = 7410
# The secrets of a node container, and where the entrypoint installs each.
TLS_IN_CONTAINER = ("/etc/mosix/tls/ca.crt", "/etc/mosix/tls/node.crt", "/etc/mosix/tls/node.key")
SECRETS_IN_CONTAINER = {"/run/secrets/tls_ca": ("0644", TLS_IN_CONTAINER[0]),
                        "/run/secrets/node_cert": ("0644", TLS_IN_CONTAINER[1]),
                        "/run/secrets/node_key": ("0600", TLS_IN_CONTAINER[2])}
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
STATE_DIR = "/var/lib/mosix"
SOCKET = "/run/mosix/mosixd.sock"
CONFIG = "/etc/mosix/mosix.toml"

# The documented layout of /etc/mosix/mosix.toml, and the flag overriding each key.
TOML_KEYS = {
    ("node", "id"): "--id",
    ("node", "listen"): "--listen",
    ("node", "advertise"): "--advertise",
    ("node", "socket"): "--socket",
    ("node", "state_dir"): "--state-dir",
    ("node", "key_file"): "--key-file",
    ("node", "peers"): "--peers",
    ("node", "leave_timeout"): "--leave-timeout",
    ("load", "source"): "--load-source",
    ("load", "cpus"): "--cpus",
    ("load", "cpuset"): "--cpuset",
    ("load", "speed"): "--speed",
    ("gossip", "interval"): "--gossip-interval",
    ("gossip", "window"): "--window",
    ("gossip", "down_after"): "--down-after",
    ("log", "level"): "--log-level",
    ("policy", "balance"): "--no-balance",
    ("limits", "sessions"): "--max-sessions",
    ("limits", "sessions_per_user"): "--max-sessions-per-user",
    ("limits", "launch_timeout"): "--launch-timeout",
    ("limits", "guest_tasks"): "--max-guest-tasks",
    ("limits", "tasks_per_user"): "--max-tasks-per-user",
    ("security", "admin_group"): "--admin-group",
    ("security", "insecure"): "--insecure",
    ("security", "run_as_root"): "--run-as-root",
    ("security", "deny_users"): "--deny-users",
    ("security", "homes"): "--homes",
    ("metrics", "listen"): "--metrics",
    ("tls", "ca"): "--tls-ca",
    ("tls", "cert"): "--tls-cert",
    ("tls", "key"): "--tls-key",
}


# --- helpers ---------------------------------------------------------------------


def flag_map(argv: list[str]) -> dict[str, str | None]:
    """Turn `--a x --b=y --c` into {"--a": "x", "--b": "y", "--c": None}."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("--"), f"expected a flag, got {arg!r} in {argv}"
        if "=" in arg:
            name, value = arg.split("=", 1)
            out[name] = value
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[arg] = argv[i + 1]
            i += 2
        else:
            out[arg] = None
            i += 1
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    assert host and port.isdigit(), f"not HOST:PORT: {addr!r}"
    return host, int(port)


def parse_with_mosixd(argv: list[str]) -> argparse.Namespace:
    """Parse argv with mosixd's own parser; fail (not exit) if it is rejected."""
    from mosixd.daemon.main import build_parser

    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports the error on stderr, then exits
        pytest.fail(f"mosixd rejects {shlex.join(argv)} (exit {exc.code})")


def load_compose() -> dict:
    with COMPOSE.open() as f:
        return yaml.safe_load(f)


def service_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def project_scripts() -> dict[str, str]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_value(unit: dict, section: str, key: str) -> str | None:
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as [(INSTRUCTION, arguments)], continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        if line:
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return out


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (relative to the context) out; the last
    matching pattern wins, `!` re-includes. Covers the syntax used in this repo."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        bare = pat[3:] if pat.startswith("**/") else pat
        for cand in candidates:
            if fnmatch(cand, pat) or fnmatch(cand, bare) or fnmatch(cand.split("/")[-1], bare):
                ignored = not negate
                break
    return ignored


# --- docker-compose.yml -------------------------------------------------------------


def test_compose_services_are_the_three_nodes():
    compose = load_compose()
    services = compose["services"]
    assert sorted(services) == NODE_IDS
    networks = set()
    for name, svc in services.items():
        assert svc.get("hostname") == name
        assert svc.get("restart") == "unless-stopped"
        build = svc.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context in (".", "./"), f"{name} is not built from this repository"
        assert "entrypoint" not in svc, f"{name} must use the image's mosixd entrypoint"
        networks.add(tuple(sorted(svc.get("networks") or ["default"])))
    assert len(networks) == 1, "all nodes must share one compose network"


def test_compose_nodes_match_the_local_rig():
    from mosixd.daemon.local import plan_cluster

    plans = {p.id: p for p in plan_cluster(3, port=PORT)}
    assert sorted(plans) == NODE_IDS
    rig_id_of = {p.address: p.id for p in plans.values()}
    services = load_compose()["services"]
    compose_id_of = {f"{svc['hostname']}:{PORT}": name for name, svc in services.items()}

    for node_id, plan in plans.items():
        got = flag_map(service_command(services[node_id]))
        want = flag_map(
            plan.argv(state_dir=STATE_DIR, tls=TLS_IN_CONTAINER, socket=SOCKET)
        )
        # The compose command says everything the local rig says, plus where peers
        # reach the node (--advertise) and how long it may take to leave.
        assert set(got) - set(want) == {"--advertise", "--leave-timeout"}, node_id
        assert set(want) <= set(got), node_id

        assert got["--id"] == want["--id"] == node_id
        assert split_addr(got["--listen"])[1] == split_addr(want["--listen"])[1] == PORT
        assert got["--advertise"] == f"{services[node_id]['hostname']}:{PORT}"
        compose_peers = {compose_id_of[a] for a in got["--peers"].split(",")}
        rig_peers = {rig_id_of[a] for a in want["--peers"].split(",")}
        assert compose_peers == rig_peers == set(NODE_IDS) - {node_id}
        assert got["--load-source"] == want["--load-source"] == "tasks"
        for flag in ("--state-dir", "--tls-ca", "--tls-cert", "--tls-key", "--socket"):
            assert got[flag] == want[flag], (node_id, flag)


def test_every_compose_command_is_accepted_by_mosixd():
    from mosixd.daemon.local import plan_cluster

    for name, svc in load_compose()["services"].items():
        parse_with_mosixd(service_command(svc))
    # ... and so is what the local rig passes, with the same flag names.
    for plan in plan_cluster(3, port=PORT):
        parse_with_mosixd(plan.argv(state_dir="/x", tls=("/a", "/b", "/c"), socket="/s"))


def test_compose_nodes_get_their_own_certificate_as_secrets():
    compose = load_compose()
    for name, svc in compose["services"].items():
        targets = {}
        for entry in svc.get("secrets", []):
            source = entry if isinstance(entry, str) else entry["source"]
            target = entry if isinstance(entry, str) else entry.get("target", source)
            targets[f"/run/secrets/{target}"] = compose["secrets"][source]["file"]
        # Each node its own certificate and key; the CA's certificate shared; no cluster key.
        assert targets == {"/run/secrets/tls_ca": "./tls/ca.crt", "/run/secrets/node_cert": f"./tls/{name}.crt",
                           "/run/secrets/node_key": f"./tls/{name}.key"}, name
        flags = flag_map(service_command(svc))
        assert (flags["--tls-ca"], flags["--tls-cert"], flags["--tls-key"]) == TLS_IN_CONTAINER, name
        assert "--key-file" not in flags and "--insecure" not in flags, name
    script = ENTRYPOINT.read_text()
    for secret, (mode, path) in SECRETS_IN_CONTAINER.items():
        assert f"install -D -m {mode} -o root -g root {secret} {path}" in script
    assert script.rstrip().endswith('exec mosixd "$@"')


def test_compose_nodes_expose_the_port_and_have_a_healthcheck():
    scripts = project_scripts()
    for name, svc in load_compose()["services"].items():
        assert str(PORT) in [str(p) for p in svc.get("expose", [])], name
        for mapping in svc.get("ports", []):
            assert str(mapping).rsplit(":", 1)[-1] == str(PORT), (name, mapping)

        test = svc["healthcheck"]["test"]
        if isinstance(test, str):
            argv = shlex.split(test)
        elif test[0] == "CMD-SHELL":
            argv = shlex.split(test[1])
        else:
            assert test[0] == "CMD", (name, test)
            argv = list(test[1:])
        assert argv[0] in scripts, f"{argv[0]} is not a console script of the project"
        assert argv[0] == "mosctl" and argv[1] == "status", (name, argv)


def test_cluster_key_is_kept_out_of_the_image_and_of_git():
    assert dockerignored("cluster.key", dockerignore_patterns())
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "cluster.key"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert tracked.returncode != 0, "cluster.key is committed"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "cluster.key"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0, "add /cluster.key to .gitignore"


# --- Dockerfile ---------------------------------------------------------------------


def test_dockerfile_installs_from_the_wheelhouse_with_no_network():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE=python:3.11-slim")
    assert instructions[1] == ("FROM", "${BASE}")
    # The wheelhouse is copied in and the project installed from it alone.
    copies = [args.split() for i, args in instructions if i == "COPY"]
    assert ["wheels", "/wheels"] in copies
    runs = " ".join(args for i, args in instructions if i == "RUN")
    assert "pip install --no-index --find-links /wheels mosix" in runs
    assert "pip install" not in runs.replace("pip install --no-index --find-links /wheels mosix", "")

    entrypoints = [args for i, args in instructions if i == "ENTRYPOINT"]
    entrypoint = json.loads(entrypoints[-1])  # exec form, so signals reach mosixd
    assert entrypoint == ["mosix-entrypoint"]
    assert ["docker/entrypoint.sh", "/usr/local/bin/mosix-entrypoint"] in copies
    assert "mosixd" in project_scripts()
    assert str(PORT) in " ".join(args for i, args in instructions if i == "EXPOSE")


def test_compose_builds_on_a_base_that_can_be_chosen():
    for svc in load_compose()["services"].values():
        assert svc["build"] == {"context": ".", "args": {"BASE": "${MOSIX_BASE:-python:3.11-slim}"}}


def test_dockerignore_sends_only_what_the_build_needs():
    patterns = dockerignore_patterns()
    for path in ("Dockerfile", "wheels/mosix-0.1.0-py3-none-any.whl", "docker/entrypoint.sh"):
        assert not dockerignored(path, patterns), f".dockerignore leaves out {path}"
    for path in (".venv", ".git", "tests/test_deploy.py", "cluster.key", "mosixd/__init__.py"):
        assert dockerignored(path, patterns), f".dockerignore lets in {path}"


# --- systemd ------------------------------------------------------------------------


def test_unit_key_directives():
    unit = read_unit(UNIT)
    svc = unit["Service"]
    exec_start = shlex.split(unit_value(unit, "Service", "ExecStart"))
    assert exec_start[0] == "/usr/local/bin/mosixd"
    assert flag_map(exec_start[1:]) == {"--config": CONFIG}
    parse_with_mosixd(exec_start[1:])

    expected = {
        "Type": "simple",
        "Restart": "on-failure",
        "KillMode": "mixed",
        "StandardOutput": "journal",
        "StandardError": "journal",
        "SyslogIdentifier": "mosixd",
        "RuntimeDirectory": "mosix",
        "RuntimeDirectoryMode": "0755",
        "StateDirectory": "mosix",
        "ConfigurationDirectory": "mosix",
        "ProtectSystem": "full",
    }
    for key, value in expected.items():
        assert unit_value(unit, "Service", key) == value, key
    assert "2" in " ".join(svc["RestartPreventExitStatus"]).split()
    for key in ("RestartSec", "TimeoutStopSec", "LimitNOFILE"):
        assert key in svc, key
    # Tasks write in their users' home directories and may run setuid helpers.
    assert unit_value(unit, "Service", "ProtectHome") in (None, "no", "false")
    assert unit_value(unit, "Service", "NoNewPrivileges") in (None, "no", "false")
    for key in ("After", "Wants"):
        assert "network-online.target" in " ".join(unit["Unit"][key]).split(), key
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_directories_match_the_daemon_defaults():
    unit = read_unit(UNIT)
    run_dir = Path("/run") / unit_value(unit, "Service", "RuntimeDirectory")
    state_dir = Path("/var/lib") / unit_value(unit, "Service", "StateDirectory")
    conf_dir = Path("/etc") / unit_value(unit, "Service", "ConfigurationDirectory")
    assert Path(SOCKET).parent == run_dir
    assert state_dir == Path(STATE_DIR)
    assert Path(CONFIG).parent == conf_dir

    with EXAMPLE_TOML.open("rb") as f:
        node = tomllib.load(f)["node"]
    assert Path(node["socket"]) == Path(SOCKET)
    assert Path(node["state_dir"]) == state_dir
    assert Path(node["key_file"]).parent == conf_dir


def _seconds(value: str) -> float:
    assert value.endswith("s") and value[:-1].isdigit(), value
    return float(value[:-1])


def test_a_leaving_node_has_time_to_move_its_guests_before_it_is_killed():
    from mosixd.settings.config import Config

    with EXAMPLE_TOML.open("rb") as f:
        leave = tomllib.load(f)["node"]["leave_timeout"]
    assert leave == Config(node_id="x").leave_timeout  # the example shows the default
    assert leave < _seconds(unit_value(read_unit(UNIT), "Service", "TimeoutStopSec"))
    for name, svc in load_compose()["services"].items():
        flags = flag_map(service_command(svc))
        assert float(flags["--leave-timeout"]) < _seconds(svc["stop_grace_period"]), name


def _mosixd_script() -> Path:
    script = Path(sys.executable).parent / "mosixd"
    if not script.exists():
        found = shutil.which("mosixd")
        assert found, "the mosixd console script is not installed"
        script = Path(found)
    return script


def _verify(unit_text: str, tmp_path: Path) -> list[str]:
    """Run systemd-analyze verify on unit_text; return its lines about the unit."""
    path = tmp_path / "mosixd.service"
    path.write_text(unit_text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    output = (result.stdout + result.stderr).splitlines()
    return [line for line in output if "mosixd.service" in line]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/mosixd " in text
    text = text.replace("ExecStart=/usr/local/bin/mosixd ", f"ExecStart={_mosixd_script()} ")

    # The check can see a broken directive here, so silence below means something.
    broken = text.replace("Restart=on-failure", "Restart=sometimes")
    (tmp_path / "broken").mkdir()
    assert _verify(broken, tmp_path / "broken"), "systemd-analyze misses a bad directive"

    problems = _verify(text, tmp_path)
    assert not problems, "\n".join(problems)


# --- the example configuration -------------------------------------------------------


def test_example_toml_has_every_documented_key():
    with EXAMPLE_TOML.open("rb") as f:
        data = tomllib.load(f)
    keys = {(section, key) for section, table in data.items() for key in table}
    assert keys == set(TOML_KEYS)


def test_example_toml_keys_are_also_mosixd_flags():
    with EXAMPLE_TOML.open("rb") as f:
        data = tomllib.load(f)
    argv: list[str] = []
    for (section, key), flag in TOML_KEYS.items():
        value = data[section][key]
        if isinstance(value, bool):
            argv += [flag] if not value else []  # a switch: --no-balance turns balancing off
            continue
        argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    parse_with_mosixd(argv)


def test_example_toml_is_accepted_by_the_config_loader():
    from mosixd.settings.config import load_config

    load_config(EXAMPLE_TOML, {})
