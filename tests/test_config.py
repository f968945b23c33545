"""Config file + flags -> one validated Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosixd.settings.config import Config, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mosix.toml"
    path.write_text(text)
    return path


def test_file_values_and_flag_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
[node]
id = "alpha"
listen = "10.1.2.3:7000"
peers = ["10.1.2.4:7000", "10.1.2.5:7000"]
state_dir = "/srv/mosix"
[load]
source = "tasks"
cpus = 4
[gossip]
interval = 0.5
window = 8
""")
    config = load_config(path, {"window": 12, "speed": None, "peers": "10.9.9.9:1,10.9.9.8:2"})
    assert config.node_id == "alpha"
    assert config.listen == "10.1.2.3:7000"
    assert config.advertise == "10.1.2.3:7000", "a concrete listen address is advertised as is"
    assert config.peers == ("10.9.9.9:1", "10.9.9.8:2"), "a flag wins over the file"
    assert config.state_dir == Path("/srv/mosix")
    assert (config.load_source, config.cpus, config.gossip_interval, config.window) == ("tasks", 4, 0.5, 12)
    assert config.source == path


def test_defaults_advertise_the_host_name() -> None:
    config = load_config(None, {"node_id": "n9", "key_file": "/k"})
    assert isinstance(config, Config)
    assert config.listen == "0.0.0.0:7410"
    assert not config.advertise.startswith("0.0.0.0") and config.advertise.endswith(":7410")


@pytest.mark.parametrize("text,message", [
    ('[gossip]\nwindow = 1\n', "gossip.window: must be at least 2, got 1"),
    ('[gossip]\nwindow = 2.5\n', "gossip.window: expected a whole number, got 2.5"),
    ('[load]\nsource = "cpu"\n', "load.source: expected one of host, tasks, got 'cpu'"),
    ('[node]\npeers = "a"\n', "node.peers: expected HOST:PORT, got 'a'"),
    ('[node]\nlisten = "h:99999"\n', "node.listen: expected HOST:PORT with a port in 1..65535, got 'h:99999'"),
    ('[node]\nadvertise = "::1:7410"\n', "node.advertise: an IPv6 address takes brackets: [::1]:7410"),
    ('[node]\nid = ""\n', "node.id: expected a non-empty string, got ''"),
    ('[gossip]\ninterval = true\n', "gossip.interval: expected a number, got True"),
    ('[colour]\nred = 1\n', "colour.red: unknown key"),
    ('[node\n', "mosix.toml:"),
])
def test_bad_values_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), {})
    assert message in str(err.value)


def test_bad_flag_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="gossip.down_after: must be at least 0.1"):
        load_config(None, {"down_after": 0})
