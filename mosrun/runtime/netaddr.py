"""Network addresses as mosix writes them: ``host:port``, ``[v6]:port``, a host being a DNS
name or an IPv4 or IPv6 address.

Which machine an address belongs to is never decided by comparing strings: a name is
resolved, and addresses are compared as addresses. Standard library only.
"""

from __future__ import annotations

import socket


def split(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host without brackets, port); ValueError if bad."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address takes brackets: [{host}]:{port}, got {address!r}")
    return host, int(port)


def join(host: str, port: int) -> str:
    """(host, port) -> ``"host:port"``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical(ip: str) -> str:
    """An IP address in its one canonical spelling (``::0001`` -> ``::1``); ValueError if not one."""
    import ipaddress  # a few ms: only where addresses are compared

    return str(ipaddress.ip_address(ip.split("%", 1)[0]))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or a name resolved here) is only reachable from this
    machine: every address it stands for is a loopback one. A name that does not resolve
    is not."""
    import ipaddress

    try:
        found = [canonical(host)]
    except ValueError:
        try:
            found = resolve(host)
        except OSError:
            return False
    return bool(found) and all(ipaddress.ip_address(ip).is_loopback for ip in found)


def resolve(host: str) -> list[str]:
    """The IP addresses ``host`` names here, in the resolver's order; OSError if none."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(canonical(str(info[4][0])) for info in infos))


def is_local(ip: str) -> bool:
    """Whether this machine has the address ``ip`` (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


def own_address(host: str) -> str:
    """The address of this machine that ``host`` (this node's advertised name or address)
    stands for: the first address it resolves to that is this machine's. OSError naming the
    host if it resolves to none of them."""
    found = resolve(host)
    for ip in found:
        if is_local(ip):
            return ip
    raise OSError(f"{host} resolves to {', '.join(found)}, none of them an address of this machine")
