"""What a link really does, measured from inside a node: ICMP ping and a plain TCP stream.

    python tests/netprobe.py ping ADDRESS [COUNT [INTERVAL]]   -> {"rtt": [s...], "sent": N}
    python tests/netprobe.py serve PORT                         (receives one stream, prints its size)
    python tests/netprobe.py stream ADDRESS PORT MEGABYTES      -> {"bytes": N, "seconds": s}

The separate-hosts rig checks its link profiles with these, and the benchmarks take them as the
raw link that every figure is a ratio to. ICMP needs root (a raw socket). Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(address: str, count: int = 20, interval: float = 0.02, timeout: float = 1.0) -> dict[str, object]:
    """ICMP echo round trips to ``address``, in seconds (lost ones left out)."""
    ident = os.getpid() & 0xFFFF
    rtts: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        for seq in range(count):
            payload = struct.pack("!d", time.perf_counter()) + bytes(48)
            header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", ECHO_REQUEST, 0, _checksum(header + payload), ident, seq) + payload
            sent = time.perf_counter()
            try:
                sock.sendto(packet, (address, 0))
            except OSError:  # no route there (a partition): lost, as ping counts it
                time.sleep(interval)
                continue
            deadline = sent + timeout
            while time.perf_counter() < deadline:
                try:
                    reply = sock.recv(2048)
                except TimeoutError:
                    break
                start = (reply[0] & 0x0F) * 4  # past the IP header
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", reply[start:start + 8])
                if kind == ECHO_REPLY and rid == ident and rseq == seq:
                    rtts.append(time.perf_counter() - sent)
                    break
            time.sleep(interval)
    return {"rtt": rtts, "sent": count}


def serve(port: int) -> None:
    """Receive one TCP stream to its end; print how many bytes came."""
    with socket.create_server(("0.0.0.0", port)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            got, buf = 0, bytearray(1 << 20)
            while n := conn.recv_into(buf):
                got += n
            conn.sendall(b"+")
    print(json.dumps({"bytes": got}), flush=True)


def stream(address: str, port: int, megabytes: int) -> dict[str, float]:
    """Send ``megabytes`` MiB as fast as TCP goes, until the receiver has them all."""
    block, total = bytes(1 << 20), megabytes << 20
    with socket.create_connection((address, port), timeout=60) as sock:
        start = time.perf_counter()
        for _ in range(megabytes):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
        return {"bytes": total, "seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    if argv[0] == "ping":
        count = int(argv[2]) if len(argv) > 2 else 20
        interval = float(argv[3]) if len(argv) > 3 else 0.02
        print(json.dumps(ping(argv[1], count, interval)))
    elif argv[0] == "serve":
        serve(int(argv[1]))
    elif argv[0] == "stream":
        print(json.dumps(stream(argv[1], int(argv[2]), int(argv[3]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
