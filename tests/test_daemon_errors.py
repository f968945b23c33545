"""What an administrator sees when mosixd cannot start or a peer is missing."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, free_port, wait_for

from mosixd.wire.auth import generate_key


def run_mosixd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mosixd"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    generate_key(path)
    return path


def node_flags(tmp_path: Path, key: Path, host: str = "127.0.1.7", port: int | None = None) -> list[str]:
    port = port or free_port([host])
    return ["--id", "t1", "--listen", f"{host}:{port}", "--key-file", str(key), "--state-dir",
            str(tmp_path / "state"), "--socket", str(tmp_path / "t1.sock"), "--speed", "1", "--cpus", "1"]


def test_bad_config_value_names_the_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "mosix.toml"
    config.write_text('[gossip]\ninterval = -1\n')
    out = run_mosixd("--config", str(config))
    assert out.returncode == 2
    assert out.stderr.strip() == "mosixd: config error: gossip.interval: must be at least 0.01, got -1"


def test_unknown_config_key_and_bad_flag_value(tmp_path: Path) -> None:
    config = tmp_path / "mosix.toml"
    config.write_text('[node]\nlisen = "0.0.0.0:1"\n')
    out = run_mosixd("--config", str(config))
    assert out.returncode == 2 and "node.lisen: unknown key" in out.stderr
    out = run_mosixd("--config", str(tmp_path / "absent.toml"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = run_mosixd("--listen", "nowhere", "--key-file", "/nonexistent")
    assert out.returncode == 2 and "node.listen: expected HOST:PORT" in out.stderr


def test_missing_key_file_is_one_line(tmp_path: Path) -> None:
    out = run_mosixd(*node_flags(tmp_path, tmp_path / "nokey"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"mosixd: cluster key file {tmp_path / 'nokey'} does not exist"


def test_port_in_use_is_one_line(tmp_path: Path, key: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.1.7", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_mosixd(*node_flags(tmp_path, key, port=port))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mosixd: cannot listen on 127.0.1.7:{port}: address already in use (is another mosixd running?)")


def test_unreachable_peer_is_reported_once_and_the_daemon_keeps_running(tmp_path: Path, key: Path) -> None:
    dead_peer = f"127.0.1.8:{free_port(['127.0.1.8'])}"
    log = tmp_path / "node.log"
    proc = subprocess.Popen([str(BIN / "mosixd"), *node_flags(tmp_path, key), "--peers", dead_peer,
                             "--gossip-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        wait_for(lambda: f"peer {dead_peer} unreachable" in log.read_text(), 10)
        time.sleep(2.0)  # ten rounds' worth of retries
        assert proc.poll() is None
        assert log.read_text().count(f"peer {dead_peer} unreachable") == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert not (tmp_path / "t1.sock").exists()


def test_a_second_daemon_on_the_same_socket_is_refused(tmp_path: Path, key: Path) -> None:
    flags = node_flags(tmp_path, key)
    first = subprocess.Popen([str(BIN / "mosixd"), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "t1.sock").exists(), 10)
        other = node_flags(tmp_path, key, host="127.0.1.9")
        out = run_mosixd(*other)
        assert out.returncode == 1
        assert f"another mosixd is already serving {tmp_path / 't1.sock'}" in out.stderr
    finally:
        first.terminate()
        first.wait(timeout=10)
