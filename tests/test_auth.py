"""Cluster-key credentials: signing and checking, in process."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mosixd.wire.auth import KeyFileError, generate_key, load_key, sign, verify

KEY = b"k" * 32
METHOD = "/mosix.v1.Admin/ClusterStatus"


def test_signed_call_verifies_only_for_its_key_and_method() -> None:
    token = sign(KEY, METHOD, now=1000.0)
    assert verify(KEY, METHOD, token, now=1001.0) is None
    assert verify(b"x" * 32, METHOD, token, now=1001.0) == "wrong cluster key"
    assert verify(KEY, "/mosix.v1.Admin/SetBlocked", token, now=1001.0) == "wrong cluster key"


def test_missing_malformed_and_stale_credentials() -> None:
    assert verify(KEY, METHOD, None) == "no cluster-key credentials"
    assert verify(KEY, METHOD, "v1:abc") == "malformed credentials"
    assert verify(KEY, METHOD, "v2:1:2:3") == "malformed credentials"
    old = sign(KEY, METHOD, now=1000.0)
    assert "older than" in (verify(KEY, METHOD, old, now=2000.0) or "")


def test_generated_key_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cluster.key"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key and len(key) >= 32


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "none")
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(KeyFileError, match="holds 3 bytes; at least 16 needed"):
        load_key(short)
    with pytest.raises(KeyFileError, match="is a directory"):
        load_key(tmp_path)
