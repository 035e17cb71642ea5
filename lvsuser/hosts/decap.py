"""User-space IP-in-IP decapsulator for real servers whose kernel has no ipip module.

Theory of operation
-------------------
In LVS-TUN the director wraps each client packet in an outer IPv4 header (protocol 4, IPIP)
addressed to the real server. A kernel with ipip hands it to tunl0, which strips the outer
header; the inner packet (dst = VIP) is then delivered locally because the VIP sits on tunl0.

Without ipip we do the same in user space:

    eth0 --(outer IPv4, proto 4, dst = RIP)--> raw socket --(inner packet)--> TUN lvtun0 (has VIP)

We receive with a raw IPv4 socket bound to protocol 4 rather than an AF_PACKET tap. The kernel
has then already decided the packet is addressed to this host, checked the outer header and
reassembled fragments; and, more importantly, a raw socket for protocol 4 is what stops the
kernel from answering every tunnelled packet with ICMP "protocol unreachable" (it sends that
only when neither a protocol handler nor a raw socket took the packet). An AF_PACKET tap
would see the packet but could not keep the kernel quiet without a firewall rule.

Writing the inner packet into the TUN device makes it arrive "on lvtun0", exactly like on tunl0:
the VIP on lvtun0 makes it local, and the real server answers from the VIP straight to the
client through its own default route (the director is not on the way back). Reverse-path
filtering must be off (or loose) on lvtun0, since the client is not reached through lvtun0;
`lvsuser realserver tun` sets that.

Only inner IPv4 packets addressed to one of the configured VIPs are passed on; anything else
is counted and dropped, so the device cannot be used to inject arbitrary traffic. The TUN device
is not persistent: when this process ends, the device and its VIP disappear with it.

Run by `lvsuser realserver tun` (detached), not by hand:
    python3 -m lvsuser.hosts.decap --device lvtun0 --vip 198.18.1.100 --pidfile F --stats F
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IPPROTO_IPIP = 4
STATS_INTERVAL = 1.0  # seconds between stats-file updates while counters change


class Counters:
    """What the decapsulator did; written to the stats file as JSON."""

    def __init__(self):
        self.received = 0
        self.delivered = 0
        self.malformed = 0        # outer or inner header does not parse
        self.not_for_vip = 0      # inner destination is not one of our VIPs
        self.write_errors = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def decapsulate(outer: bytes, vips: frozenset[bytes], counters: Counters) -> bytes | None:
    """Return the inner IPv4 packet of OUTER (an IPv4/IPIP packet), or None (counted) if it
    is malformed or not addressed to a VIP. Pure function of its input: unit-testable."""
    counters.received += 1
    if len(outer) < 20 or outer[0] >> 4 != 4:
        counters.malformed += 1
        return None
    outer_header_len = (outer[0] & 0x0F) * 4
    outer_total = struct.unpack_from("!H", outer, 2)[0]
    if outer_header_len < 20 or outer[9] != IPPROTO_IPIP or outer_total > len(outer) \
            or outer_total < outer_header_len + 20:
        counters.malformed += 1
        return None
    inner = outer[outer_header_len:outer_total]
    inner_header_len = (inner[0] & 0x0F) * 4
    inner_total = struct.unpack_from("!H", inner, 2)[0]
    if inner[0] >> 4 != 4 or inner_header_len < 20 or inner_total != len(inner) \
            or inner_total < inner_header_len:
        counters.malformed += 1
        return None
    if inner[16:20] not in vips:
        counters.not_for_vip += 1
        return None
    return inner


def open_tun(name: str) -> int:
    """Create (non-persistent) TUN device NAME, no packet-info header; return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError:
        os.close(fd)
        raise
    return fd


def configure_device(name: str, vips: list[str]) -> None:
    """Put each VIP (/32) on device NAME and bring it up."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        for vip in vips:
            ipr.addr("add", index=index, address=vip, prefixlen=32)
        ipr.link("set", index=index, state="up")


def _write_json_atomically(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def serve(device: str, vips: list[str], pidfile: str, statsfile: str, ready_fd: int | None,
          max_seconds: float | None = None) -> int:
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    counters = Counters()
    vip_set = frozenset(socket.inet_aton(v) for v in vips)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        tun_fd = open_tun(device)
        configure_device(device, vips)
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    except Exception as exc:  # reported to the parent, which prints it
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}\n".encode())
            os.close(ready_fd)
        return 1
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    last_written = None
    last_time = 0.0
    started = time.monotonic()
    try:
        while not stopping:
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
            try:
                readable, _, _ = select.select([sock], [], [], 0.5)
            except InterruptedError:
                continue
            if readable:
                # drain what is queued, bounded so stats and signals are seen regularly
                for _ in range(256):
                    try:
                        outer = sock.recv(65535, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    inner = decapsulate(outer, vip_set, counters)
                    if inner is None:
                        continue
                    try:
                        os.write(tun_fd, inner)
                        counters.delivered += 1
                    except OSError:
                        counters.write_errors += 1
            now = time.monotonic()
            snapshot = counters.as_dict()
            if snapshot != last_written and now - last_time >= STATS_INTERVAL:
                _write_json_atomically(statsfile, snapshot)
                last_written, last_time = snapshot, now
    finally:
        _write_json_atomically(statsfile, counters.as_dict())
        os.close(tun_fd)
        sock.close()
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvsuser-decap",
                                     description="user-space IP-in-IP decapsulator (LVS-TUN real server)")
    parser.add_argument("--device", required=True, help="TUN device to create, e.g. lvtun0")
    parser.add_argument("--vip", nargs="+", required=True, help="IPv4 VIP(s) to accept")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--stats", required=True, help="JSON counters file")
    parser.add_argument("--ready-fd", type=int, help="write 'ready' or 'error: ...' here")
    parser.add_argument("--max-seconds", type=float, help="exit after this long (tests)")
    args = parser.parse_args(argv)
    return serve(args.device, args.vip, args.pidfile, args.stats, args.ready_fd, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
