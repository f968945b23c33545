"""Node certificates: ``mosixd ca`` as an administrator uses it, and what a daemon refuses."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, free_port

from mosixd.wire.tls import TlsError, TlsFiles, load, node_of


def ca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mosixd"), "ca", *args], capture_output=True, text=True, timeout=60)


def test_a_ca_issues_node_certificates_that_name_the_node(tmp_path: Path) -> None:
    made = ca("init", "--dir", str(tmp_path / "ca"))
    assert made.returncode == 0 and "ca.crt" in made.stdout
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    issued = ca("issue", "alpha", "--dir", str(tmp_path / "ca"), "--out", str(tmp_path / "alpha"),
                "--name", "alpha.lab", "--name", "10.0.0.7")
    assert issued.returncode == 0, issued.stderr
    files = TlsFiles(tmp_path / "ca" / "ca.crt", tmp_path / "alpha" / "alpha.crt", tmp_path / "alpha" / "alpha.key")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert node_of(load(files).cert) == "alpha"


def test_mistakes_with_certificates_are_one_line(tmp_path: Path) -> None:
    assert ca("init", "--dir", str(tmp_path / "ca")).returncode == 0
    again = ca("init", "--dir", str(tmp_path / "ca"))
    assert again.returncode == 1 and again.stderr.splitlines() == [
        f"mosixd ca: a CA already exists in {tmp_path / 'ca'}; remove it first to make another"]
    bad = ca("issue", "../x", "--dir", str(tmp_path / "ca"))
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "node id" in bad.stderr
    nowhere = ca("issue", "n1", "--dir", str(tmp_path / "none"))
    assert nowhere.returncode == 1 and "does not exist" in nowhere.stderr
    # A certificate of another CA, and a key others can read, are refused when loaded.
    assert ca("init", "--dir", str(tmp_path / "other")).returncode == 0
    assert ca("issue", "n1", "--dir", str(tmp_path / "other")).returncode == 0
    with pytest.raises(TlsError, match="not signed by the CA|is not one of the CA"):
        load(TlsFiles(tmp_path / "ca" / "ca.crt", tmp_path / "other" / "n1.crt", tmp_path / "other" / "n1.key"))
    (tmp_path / "other" / "n1.key").chmod(0o644)
    with pytest.raises(TlsError, match="readable by others"):
        load(TlsFiles(tmp_path / "other" / "ca.crt", tmp_path / "other" / "n1.crt", tmp_path / "other" / "n1.key"))


def test_a_daemon_refuses_a_network_address_without_tls(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o600)
    port = free_port(["0.0.0.0"])
    out = subprocess.run([str(BIN / "mosixd"), "--id", "t1", "--listen", f"0.0.0.0:{port}", "--key-file", str(key),
                          "--state-dir", str(tmp_path / "st"), "--socket", str(tmp_path / "t1.sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert "0.0.0.0" in out.stderr and "no TLS is set" in out.stderr and "--insecure" in out.stderr
    half = subprocess.run([str(BIN / "mosixd"), "--id", "t1", "--tls-ca", "/x/ca.crt", "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=30)
    assert half.returncode == 2 and "ca, cert and key go together" in half.stderr
