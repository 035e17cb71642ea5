"""The shared vocabulary of lvsuser: virtual services, real servers (dests), timeouts.

Theory of operation
-------------------
This module mirrors what kernel IPVS keeps per service and per destination
(``struct ip_vs_service_user`` / ``struct ip_vs_dest_user`` and their netlink
attributes), with the kernel's constant values, so that every backend (the
user-space fastpath and kernel IPVS over generic netlink) and every front end
(the ipvsadm-compatible CLI, the rules file, the lab) speaks the same words.

Addresses are ``ipaddress`` objects; ports are host-order ints.  A service is
identified by ``ServiceKey`` -- (af, protocol, addr, port) or (af, fwmark) --
exactly as the kernel looks services up.  Nothing here does I/O.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import socket
from typing import Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

AF_INET = socket.AF_INET  # 2
AF_INET6 = socket.AF_INET6  # 10

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

PROTOCOL_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}


class Forward(enum.IntEnum):
    """Forwarding method: the kernel's IP_VS_CONN_F_FWD_MASK values."""

    MASQ = 0x0  # -m, NAT ("Masq" in listings)
    LOCALNODE = 0x1  # "Local"
    TUNNEL = 0x2  # -i, IP-in-IP ("Tunnel")
    ROUTE = 0x3  # -g, direct routing ("Route"), the ipvsadm default
    BYPASS = 0x4

    @property
    def listing_name(self) -> str:
        return _FWD_LISTING[self]


_FWD_LISTING = {
    Forward.MASQ: "Masq",
    Forward.LOCALNODE: "Local",
    Forward.TUNNEL: "Tunnel",
    Forward.ROUTE: "Route",
    Forward.BYPASS: "Bypass",
}

FWD_MASK = 0x7


class TunType(enum.IntEnum):
    """IP_VS_CONN_F_TUNNEL_TYPE_* (kernel >= 5.2)."""

    IPIP = 0
    GUE = 1
    GRE = 2


# Tunnel flags (IP_VS_TUNNEL_ENCAP_FLAG_*)
TUN_FLAG_NOCSUM = 0x0
TUN_FLAG_CSUM = 0x1
TUN_FLAG_REMCSUM = 0x2

# Service flags (IP_VS_SVC_F_*)
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020

# Scheduler flag aliases (ipvsadm -b): sh-fallback/mh-fallback = SCHED1, sh-port/mh-port = SCHED2
SVC_F_SCHED_SH_FALLBACK = SVC_F_SCHED1
SVC_F_SCHED_SH_PORT = SVC_F_SCHED2
SVC_F_SCHED_MH_FALLBACK = SVC_F_SCHED1
SVC_F_SCHED_MH_PORT = SVC_F_SCHED2

# Dest flags (IP_VS_DEST_F_*)
DEST_F_AVAILABLE = 0x0001
DEST_F_OVERLOAD = 0x0002

DEFAULT_SCHEDULER = "wlc"
# The kernel's IPVS_SVC_PERSISTENT_TIMEOUT.  ipvsadm does not use it: Debian's ipvsadm 1.31 sends 360
# for a bare `-p` (measured on the oracle; control/ipvsadm.py has that value).
DEFAULT_PERSISTENT_TIMEOUT = 300
DEFAULT_NETMASK_V4 = 0xFFFFFFFF
DEFAULT_NETMASK_V6 = 128

# IPVS's version word as GET_INFO reports it (1.2.1) and its default connection hash size.
IPVS_VERSION = (1, 2, 1)
IPVS_CONN_TAB_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class ServiceKey:
    """How the kernel finds a service: by (protocol, addr, port) or by fwmark, per address family."""

    af: int
    protocol: int = 0  # 0 for fwmark services
    addr: Optional[IPAddress] = None
    port: int = 0
    fwmark: int = 0

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark != 0


@dataclasses.dataclass
class Stats:
    """Counters as ip_vs_stats_user reports them (rates are per second, bytes rates in bytes/s)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclasses.dataclass
class Dest:
    """A real server of one service."""

    addr: IPAddress
    port: int
    fwd: Forward = Forward.ROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: TunType = TunType.IPIP
    tun_port: int = 0
    tun_flags: int = 0
    af: int = AF_INET
    # Run-time state, as the kernel reports it.
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    flags: int = DEST_F_AVAILABLE
    stats: Stats = dataclasses.field(default_factory=Stats)

    @property
    def overloaded(self) -> bool:
        return bool(self.flags & DEST_F_OVERLOAD)


@dataclasses.dataclass
class Service:
    """A virtual service: VIP:port (or fwmark) with its scheduler and real servers.

    ``dests`` is kept in the kernel's list order: newest first (ip_vs_add_dest uses list_add).
    """

    af: int
    protocol: int = 0
    addr: Optional[IPAddress] = None
    port: int = 0
    fwmark: int = 0
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = SVC_F_HASHED
    timeout: int = 0  # persistence timeout in seconds (only with SVC_F_PERSISTENT)
    netmask: int = DEFAULT_NETMASK_V4  # v4: a 32-bit mask; v6: a prefix length
    pe_name: str = ""
    dests: list[Dest] = dataclasses.field(default_factory=list)
    stats: Stats = dataclasses.field(default_factory=Stats)

    @property
    def key(self) -> ServiceKey:
        if self.fwmark:
            return ServiceKey(af=self.af, fwmark=self.fwmark)
        return ServiceKey(af=self.af, protocol=self.protocol, addr=self.addr, port=self.port)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & SVC_F_PERSISTENT)

    def find_dest(self, addr: IPAddress, port: int) -> Optional[Dest]:
        for dest in self.dests:
            if dest.addr == addr and dest.port == port:
                return dest
        return None


@dataclasses.dataclass
class Timeouts:
    """`ipvsadm --set tcp tcpfin udp`, in seconds; the kernel's defaults."""

    tcp: int = 900
    tcp_fin: int = 120
    udp: int = 300


@dataclasses.dataclass
class SyncDaemon:
    """A connection-sync daemon (`ipvsadm --start-daemon`); zero/None = the kernel's default."""

    state: str  # "master" or "backup"
    mcast_ifn: str
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: Optional[IPAddress] = None
    mcast_port: int = 0
    mcast_ttl: int = 0


class IPVSError(Exception):
    """A refused operation, carrying the errno the kernel would return.

    Front ends turn (operation, errno) into ipvsadm's message with its strerror table.
    """

    def __init__(self, errno_: int, message: str = ""):
        super().__init__(errno_, message)
        self.errno = errno_
        self.message = message


def parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def af_of(addr: IPAddress) -> int:
    return AF_INET6 if addr.version == 6 else AF_INET


@dataclasses.dataclass(frozen=True)
class MarkRule:
    """Which packets carry firewall mark N for fwmark services (`ipvsadm -A -f N`).

    Kernel IPVS reads marks set by iptables/nftables; a user-space director cannot see them, so
    users state the match here instead (`lvsuser mark`, or a `--mark` line in the rules file).  A packet
    matches when every given field matches: protocol (0 = any), destination network, destination
    port range (0-65535 = any), source network (None = any).  Rules are tried in insertion order.
    """

    mark: int
    dst_net: ipaddress.IPv4Network | ipaddress.IPv6Network
    protocol: int = 0
    dport_lo: int = 0
    dport_hi: int = 65535
    src_net: Optional[ipaddress.IPv4Network | ipaddress.IPv6Network] = None
