"""How mosix writes addresses, and how it decides that an address is this machine's."""

from __future__ import annotations

import pytest

from mosrun.runtime import netaddr


@pytest.mark.parametrize("address,parts", [
    ("n1:7410", ("n1", 7410)),
    ("alpha.lab:1", ("alpha.lab", 1)),
    ("10.0.0.7:65535", ("10.0.0.7", 65535)),
    ("[::1]:7410", ("::1", 7410)),
    ("[fd00::7]:80", ("fd00::7", 80)),
])
def test_split_and_join_are_inverse(address: str, parts: tuple[str, int]) -> None:
    assert netaddr.split(address) == parts
    assert netaddr.join(*parts) == address


@pytest.mark.parametrize("address,message", [
    ("n1", "expected HOST:PORT, got 'n1'"),
    (":7410", "expected HOST:PORT, got ':7410'"),
    ("n1:0", "expected HOST:PORT with a port in 1..65535, got 'n1:0'"),
    ("n1:http", "expected HOST:PORT with a port in 1..65535, got 'n1:http'"),
    ("::1:7410", "an IPv6 address takes brackets: [::1]:7410, got '::1:7410'"),
])
def test_bad_addresses_say_what_is_wrong(address: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        netaddr.split(address)
    assert str(err.value) == message


def test_addresses_compare_as_addresses_not_as_strings() -> None:
    assert netaddr.canonical("::0001") == netaddr.canonical("0:0:0:0:0:0:0:1") == "::1"
    assert netaddr.canonical("127.0.1.2") == "127.0.1.2"
    with pytest.raises(ValueError):
        netaddr.canonical("n1")


def test_a_name_stands_for_an_address_of_this_machine_or_is_refused() -> None:
    assert netaddr.own_address("localhost") in ("127.0.0.1", "::1")
    assert netaddr.own_address("127.0.1.3") == "127.0.1.3"  # all of 127/8 is this machine's
    with pytest.raises(OSError, match="198.18.0.1 resolves to 198.18.0.1, none of them an address of this machine"):
        netaddr.own_address("198.18.0.1")  # parsed, never sent to: no packet leaves
