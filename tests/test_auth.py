"""Cluster-key credentials: signing and checking, in process."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mosixd.wire.auth import (Credentials, KeyFileError, NonceCache, body_digest, check, generate_key, load_key,
                              sign, verify)

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
    assert verify(KEY, METHOD, "v1:1:2:3") == "malformed credentials"  # the old, unbound form
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


def test_a_token_carries_the_digest_of_its_request_under_the_hmac() -> None:
    body = body_digest(b"request bytes")
    token = sign(KEY, METHOD, body, now=1000.0)
    checked = check(KEY, METHOD, token, now=1000.0)
    assert isinstance(checked, Credentials) and checked.body == body
    # Swapping in the digest of another request breaks the HMAC.
    forged = token.replace(body, body_digest(b"other bytes"))
    assert check(KEY, METHOD, forged, now=1000.0) == "wrong cluster key"


def test_nonce_cache_accepts_each_token_once_within_its_lifetime() -> None:
    cache = NonceCache(capacity=100, skew=300.0)
    assert cache.admit(1000, "a", now=1000.0) is None
    assert "replayed" in (cache.admit(1000, "a", now=1001.0) or "")
    assert cache.admit(1000, "b", now=1001.0) is None
    # Once the token could no longer pass the time check, its nonce is forgotten.
    assert cache.admit(1400, "c", now=1400.0) is None
    assert len(cache) == 1


def test_a_full_nonce_cache_refuses_what_it_can_no_longer_check() -> None:
    cache = NonceCache(capacity=3, skew=300.0)
    for i, nonce in enumerate("abcd"):
        assert cache.admit(1000 + i, nonce, now=1000.0 + i) is None
    assert len(cache) == 3
    # "a" (stamp 1000) was dropped to make room: a replay of it is still refused.
    assert "too old" in (cache.admit(1000, "a", now=1004.0) or "")
    assert cache.admit(1005, "e", now=1005.0) is None
