"""The benchmark's hosts: a client, a director and two real servers, each a network namespace.

Theory of operation
-------------------
::

    client 198.18.0.2 --eth0--[198.18.0.1 director 198.18.1.1]--eth1-- rs1 198.18.1.2
                                          [198.18.2.1]--eth2-- rs2 198.18.2.2

The director is a router between three links; each real server's default route points at it,
so NAT replies come back through the director as the classic guide's NAT lab requires, and DR/TUN
replies are routed back by the director's kernel (there is no other path to the client here).
The VIP (198.18.100.1) is on none of these links: the client reaches it through its default
route, so every candidate receives VIP traffic addressed to the director's MAC, and the kernel
forwarding baseline can send the same frames to the real servers' own addresses instead.

Delivered packets are counted where they arrive: each real server has an nftables table whose
prerouting chain (raw priority, before conntrack) counts and drops the benchmark's UDP port. It
sees decapsulated TUN traffic too (the decapsulator's TUN device feeds prerouting), and dropping
keeps the real servers from answering with ICMP port-unreachable.

Everything is owned by a `lvsuser.lab.netns.Topology`: namespaces, processes and the nft tables
inside them disappear on exit, Ctrl-C and SIGTERM included.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import tempfile
import time

from lvsuser.lab import netns

VIP = "198.18.100.1"
UDP_PORT = 9000
HTTP_PORT = 80
CLIENT_ADDR = "198.18.0.2"
DIRECTOR_CLIENT_SIDE = "198.18.0.1"
# Source addresses the many-new-flows generator draws from (routed back to the client).
NEW_FLOW_SOURCES = "198.18.128.0/17"

COUNTER_TABLE = "lvsbench"
COUNTER_NAME = "udp_in"


def _poke(addr: str) -> None:
    """Send one datagram to ADDR (discard port) so the kernel resolves its neighbour now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"arp", (addr, 9))


@dataclasses.dataclass
class RealServer:
    name: str  # "rs1"
    ns: str
    addr: str
    director_side: str  # the director's address on this real server's link
    director_if: str


class BenchTopology:
    """Builds and owns the four namespaces; use as a context manager."""

    def __init__(self, prefix: str = "lvsb"):
        self._topo = netns.Topology(prefix)
        self.client = self.director = ""
        self.real_servers: list[RealServer] = []
        self.director_mac = ""

    # --------------------------------------------------------------- life cycle
    def __enter__(self) -> "BenchTopology":
        self._topo.__enter__()
        try:
            self._build()
        except BaseException:
            self._topo.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._topo.__exit__(*exc_info)

    def _build(self) -> None:
        t = self._topo
        self.client = t.add_ns("cl")
        self.director = t.add_ns("dir")
        t.veth(self.client, "eth0", self.director, "eth0")
        t.addr(self.client, "eth0", f"{CLIENT_ADDR}/24")
        t.addr(self.director, "eth0", f"{DIRECTOR_CLIENT_SIDE}/24")
        t.route(self.client, "default", DIRECTOR_CLIENT_SIDE)
        t.route(self.director, NEW_FLOW_SOURCES, CLIENT_ADDR)
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0)):
            t.sysctl(self.director, key, value)
        for number in (1, 2):
            ns = t.add_ns(f"rs{number}")
            director_if = f"eth{number}"
            t.veth(self.director, director_if, ns, "eth0")
            rs = RealServer(f"rs{number}", ns, f"198.18.{number}.2", f"198.18.{number}.1",
                            director_if)
            t.addr(self.director, director_if, f"{rs.director_side}/24")
            # DR/TUN replies come back through the director with the VIP as source; where the
            # VIP is local to the director (kernel IPVS needs that) they would be dropped as
            # martians without accept_local.
            t.sysctl(self.director, f"net.ipv4.conf.{director_if}.accept_local", 1)
            t.addr(ns, "eth0", f"{rs.addr}/24")
            t.route(ns, "default", rs.director_side)
            # Decapsulated TUN traffic arrives with the VIP as destination on another device.
            t.sysctl(ns, "net.ipv4.conf.all.rp_filter", 0)
            t.sysctl(ns, "net.ipv4.conf.default.rp_filter", 0)
            self._install_counter(ns)
            self.real_servers.append(rs)
        self.director_mac = t.mac(self.director, "eth0")
        # Resolve neighbours once so the first measured packets are not queued behind ARP.
        for rs in self.real_servers:
            self._topo.call_in(self.director, _poke, rs.addr)
        self._topo.call_in(self.client, _poke, DIRECTOR_CLIENT_SIDE)
        time.sleep(0.2)

    # --------------------------------------------------------------- processes
    def run(self, ns: str, argv, timeout: float = 30.0, check: bool = False, **kwargs):
        return self._topo.run(ns, argv, timeout=timeout, check=check, **kwargs)

    def popen(self, ns: str, argv, **kwargs) -> subprocess.Popen:
        return self._topo.popen(ns, argv, **kwargs)

    def stop(self, proc: subprocess.Popen) -> None:
        self._topo.stop(proc)

    def mac(self, ns: str, ifname: str) -> str:
        return self._topo.mac(ns, ifname)

    def sysctl(self, ns: str, key: str, value=None):
        return self._topo.sysctl(ns, key, value)

    def nft(self, ns: str, script: str) -> None:
        """Load an nft script in NS; raises with nft's own message when it refuses."""
        with tempfile.NamedTemporaryFile("w", prefix="lvsbench-", suffix=".nft") as f:
            f.write(script)
            f.flush()
            result = self.run(ns, ["nft", "-f", f.name], timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {result.stderr.strip()}")

    # --------------------------------------------------------------- delivered packets
    def _install_counter(self, ns: str) -> None:
        # A benchmark packet counts where it reaches the real server, before the real server's
        # own work, and goes no further: a plain UDP packet (forwarding, DNAT, NAT, DR) or, for
        # TUN, the IP-in-IP packet with a benchmark UDP packet inside (inner IPv4 header without
        # options: protocol at byte 9, destination port at bytes 22-23 after the outer header).
        # Counting TUN after decapsulation would measure the real server's decapsulator instead
        # of the director (on this host without ipip, a Python process at ~100k packets/s), and
        # its CPU would be taken from the director's core.
        self.nft(ns, f"""
table inet {COUNTER_TABLE} {{
    counter {COUNTER_NAME} {{ }}
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        udp dport {UDP_PORT} counter name "{COUNTER_NAME}" drop
        meta nfproto ipv4 ip protocol 4 @th,0,8 0x45 @th,72,8 17 @th,176,16 {UDP_PORT} \
            counter name "{COUNTER_NAME}" drop
    }}
}}
""")

    def delivered(self) -> dict[str, tuple[float, int]]:
        """UDP benchmark packets counted so far at each real server, each with the moment it
        was read (the middle of the nft call: on a slow machine two reads are far apart)."""
        counts = {}
        for rs in self.real_servers:
            started = time.monotonic()
            result = self.run(rs.ns, ["nft", "-j", "list", "counter", "inet", COUNTER_TABLE,
                                      COUNTER_NAME], timeout=10, check=True)
            when = (started + time.monotonic()) / 2
            for item in json.loads(result.stdout)["nftables"]:
                if "counter" in item:
                    counts[rs.name] = (when, int(item["counter"]["packets"]))
        return counts

    def tx_packets(self, ns: str, ifname: str) -> int:
        """Packets IFNAME in NS has sent (what the generator actually offered)."""
        result = self.run(ns, ["ip", "-j", "-s", "link", "show", ifname], timeout=5, check=True)
        return int(json.loads(result.stdout)[0]["stats64"]["tx"]["packets"])
