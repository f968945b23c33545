"""Daemon configuration: a TOML file plus command-line overrides -> one frozen Config.

Every value is checked here, so a bad one is reported once, naming its key, before the
daemon touches the network.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from mosrun.runtime import netaddr

DEFAULT_CONFIG = Path("/etc/mosix/mosix.toml")
DEFAULT_PORT = 7410


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node daemon needs to know, validated."""

    node_id: str
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    advertise: str = ""
    socket: Path = Path("/run/mosix/mosixd.sock")
    state_dir: Path = Path("/var/lib/mosix")
    key_file: Path = Path("/etc/mosix/cluster.key")
    peers: tuple[str, ...] = ()
    load_source: str = "host"
    cpus: int = 0
    cpuset: tuple[int, ...] = ()    # CPUs the node's tasks are pinned to; () = any
    speed: float = 0.0
    gossip_interval: float = 1.0
    window: int = 20
    down_after: float = 2.0        # a suspect that fails every probe this long is down
    log_level: str = "info"
    balance: bool = True
    leave_timeout: float = 60.0     # on SIGTERM: at most this long to move the guests away
    max_sessions: int = 4096        # mosrun sessions open at once, all users together
    max_sessions_per_user: int = 512
    launch_timeout: float = 10.0    # a new session must send its launch request within this
    max_guest_tasks: int = 0        # tasks of other homes run here at once; 0 = no limit
    max_tasks_per_user: int = 0     # tasks of one user run here at once; 0 = no limit
    checkpoint_mb: int = 4096       # a checkpoint kept at home (mosrun -A) is at most this big
    home_restart: float = 60.0      # a task and its mosrun wait this long for a restarted home daemon
    admin_group: str = ""           # its members may block the node and move any task; "" = root only
    tls_ca: Path | None = None      # the cluster CA's certificate (mosixd ca init)
    tls_cert: Path | None = None    # this node's certificate and key (mosixd ca issue NODE)
    tls_key: Path | None = None
    insecure: bool = False          # allow a non-loopback listen address without TLS
    run_as_root: bool = False       # run tasks of root (uid 0) here
    deny_users: tuple[str, ...] = ()  # users whose tasks are never run here
    homes: tuple[str, ...] = ()     # node ids that may start tasks here; () = any node of the cluster
    metrics_listen: str = ""        # HOST:PORT of the Prometheus metrics; "" = none
    source: Path | None = field(default=None, compare=False)


def _address(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    try:
        netaddr.split(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _address_or_empty(key: str, value: Any) -> str:
    return "" if value == "" else _address(key, value)


def _name_or_empty(key: str, value: Any) -> str:
    if not isinstance(value, str) or value != value.strip():
        raise ConfigError(f"{key}: expected a name (or \"\"), got {value!r}")
    return value


def _path(key: str, value: Any) -> Path:
    return Path(_text(key, value)).expanduser()


def _peers(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # a flag gives "a:1,b:2"
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of HOST:PORT, got {value!r}")
    return tuple(_address(key, v) for v in value)


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # a flag gives "a,b"
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() == v and v for v in value):
        raise ConfigError(f"{key}: expected a list of names, got {value!r}")
    return tuple(value)


def _cpuset(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # a flag gives "0,2"
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        cpus = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a list of CPU numbers, got {value!r}") from None
    if any(c < 0 for c in cpus):
        raise ConfigError(f"{key}: CPU numbers are not negative, got {value!r}")
    return cpus


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _number(kind: type, *, minimum: float, allow_zero: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if not (value >= minimum or (allow_zero and value == 0)):
            raise ConfigError(f"{key}: must be at least {minimum}, got {value!r}")
        return kind(value)

    return check


# TOML key -> (Config field, checker). Flags use the same checkers via the field name.
_SCHEMA: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "node.id": ("node_id", _text),
    "node.listen": ("listen", _address),
    "node.advertise": ("advertise", _address),
    "node.socket": ("socket", _path),
    "node.state_dir": ("state_dir", _path),
    "node.key_file": ("key_file", _path),
    "node.peers": ("peers", _peers),
    "node.leave_timeout": ("leave_timeout", _number(float, minimum=0.0, allow_zero=True)),
    "load.source": ("load_source", _choice("host", "tasks")),
    "load.cpus": ("cpus", _number(int, minimum=1, allow_zero=True)),
    "load.cpuset": ("cpuset", _cpuset),
    "load.speed": ("speed", _number(float, minimum=0.001, allow_zero=True)),
    "gossip.interval": ("gossip_interval", _number(float, minimum=0.01)),
    "gossip.window": ("window", _number(int, minimum=2)),
    "gossip.down_after": ("down_after", _number(float, minimum=0.1)),
    "log.level": ("log_level", _choice("debug", "info", "warning", "error")),
    "policy.balance": ("balance", _flag),
    "limits.sessions": ("max_sessions", _number(int, minimum=1)),
    "limits.sessions_per_user": ("max_sessions_per_user", _number(int, minimum=1)),
    "limits.launch_timeout": ("launch_timeout", _number(float, minimum=0.1)),
    "limits.guest_tasks": ("max_guest_tasks", _number(int, minimum=1, allow_zero=True)),
    "limits.tasks_per_user": ("max_tasks_per_user", _number(int, minimum=1, allow_zero=True)),
    "limits.checkpoint_mb": ("checkpoint_mb", _number(int, minimum=1)),
    "limits.home_restart": ("home_restart", _number(float, minimum=0.0, allow_zero=True)),
    "security.admin_group": ("admin_group", _name_or_empty),
    "security.insecure": ("insecure", _flag),
    "security.run_as_root": ("run_as_root", _flag),
    "security.deny_users": ("deny_users", _names),
    "security.homes": ("homes", _names),
    "metrics.listen": ("metrics_listen", _address_or_empty),
    "tls.ca": ("tls_ca", _path),
    "tls.cert": ("tls_cert", _path),
    "tls.key": ("tls_key", _path),
}
_KEY_OF_FIELD = {fname: key for key, (fname, _) in _SCHEMA.items()}


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config file into {field: checked value}; unknown keys are errors."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        if key not in _SCHEMA:
            raise ConfigError(f"{key}: unknown key in {path} (known: {', '.join(_SCHEMA)})")
        fname, check = _SCHEMA[key]
        values[fname] = check(key, value)
    return values


def load_config(path: Path | None, overrides: dict[str, Any]) -> Config:
    """Build the Config from a TOML file (None: the default file if it exists) and overrides.

    ``overrides`` maps Config field names to raw values (from flags); None values are ignored.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_toml(path))
    elif DEFAULT_CONFIG.exists():
        values.update(read_toml(DEFAULT_CONFIG))
        path = DEFAULT_CONFIG
    for fname, raw in overrides.items():
        if raw is None:
            continue
        key = _KEY_OF_FIELD.get(fname)
        if key is None:
            raise ConfigError(f"{fname}: not a configuration setting")
        values[fname] = _SCHEMA[key][1](key, raw)
    values.setdefault("node_id", socket.gethostname().split(".")[0] or "node")
    config = Config(**values, source=path)
    tls = (config.tls_ca, config.tls_cert, config.tls_key)
    if any(tls) and not all(tls):
        raise ConfigError("tls: ca, cert and key go together (set all three, or none)")
    if not config.advertise:
        config = _with_advertise(config)
    return config


def _with_advertise(config: Config) -> Config:
    """Peers need a reachable address: 0.0.0.0 is replaced by this host's name."""
    host, port = netaddr.split(config.listen)
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return replace(config, advertise=netaddr.join(host, port))
