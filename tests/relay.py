"""A packet relay on a TUN device: the latency and loss of a link, where the kernel has no netem.

A node of the separate-hosts rig (``tests/rig.py``) routes the packets it sends to the other
nodes through the TUN device this program opens. Each packet is held for the link's one-way
delay, dropped with the link's loss probability, and written back to the device, from where the
kernel forwards it out of the node's interface (the device accepts packets with a local source
address for that). Rates are not this program's business: ``tbf`` on the interface shapes them.

    python tests/relay.py DEVICE CONFIG      # CONFIG: {"delay": s, "loss": p, "offload": bool}

SIGHUP reads CONFIG again, so a link profile can change while the cluster runs. With
``offload`` the kernel hands over segments of up to 64 KiB (generic segmentation offload), so
this relay keeps up with a gigabit link; loss then drops whole segments, so a lossy profile
turns offload off and drops single packets. Standard library only.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
PR_SET_TIMERSLACK = 29
MAX_PACKET = 65536 + 64
MAX_HELD = 20000  # packets held at once: a bound, not a buffer to fill


class Relay:
    """Holds packets read from ``fd`` for ``delay`` seconds, drops a ``loss`` fraction."""

    def __init__(self, fd: int, config_path: str, wake: int) -> None:
        self.fd, self.config_path, self.wake = fd, config_path, wake  # wake: signals come in here
        self.held: collections.deque[tuple[float, bytes]] = collections.deque()
        self.delay, self.loss = 0.0, 0.0
        self.reload = True

    def configure(self) -> None:
        with open(self.config_path) as f:
            config = json.load(f)
        self.delay, self.loss = float(config.get("delay", 0.0)), float(config.get("loss", 0.0))
        offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if config.get("offload", True) else 0
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, offload)
        self.reload = False

    def run(self) -> None:
        mono, chance = time.monotonic, random.random
        while True:
            if self.reload:
                self.configure()
            timeout = max(0.0, self.held[0][0] - mono()) if self.held else None
            ready, _, _ = select.select([self.fd, self.wake], [], [], timeout)
            if self.wake in ready:
                os.read(self.wake, 64)
            if self.fd in ready:
                while len(self.held) < MAX_HELD:
                    try:
                        packet = os.read(self.fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    if self.loss and chance() < self.loss:
                        continue
                    self.held.append((mono() + self.delay, packet))
            now = mono()
            while self.held and self.held[0][0] <= now:
                try:
                    os.write(self.fd, self.held.popleft()[1])
                except OSError:
                    pass  # a packet the kernel will not take back is a lost packet


def main() -> int:
    device, config_path = sys.argv[1], sys.argv[2]
    try:  # wake up on time: the default timer slack (50 us) is a quarter of a LAN round trip
        ctypes.CDLL("libc.so.6").prctl(PR_SET_TIMERSLACK, 1)
    except (OSError, AttributeError):
        pass
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    relay = Relay(fd, config_path, wake_r)

    def reload(_signum: int, _frame: object) -> None:
        relay.reload = True

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    relay.configure()
    print("ready", flush=True)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
