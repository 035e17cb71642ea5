"""How the director reaches each real server: egress interface, MACs and MTU from the kernel.

Theory of operation
-------------------
Kernel IPVS hands each forwarded packet to the kernel's own routing (``ip_vs_xmit.c`` looks the
real server up with ``ip_route_output`` and lets the neighbour layer fill the MAC).  A user-space
director writes whole Ethernet frames, so it must do both lookups up front: for every real server
we ask the kernel for the route (``RTM_GETROUTE``, exactly what ``ip route get RIP`` prints), take
the output interface, its MAC and MTU, and the next hop (the gateway, or the real server itself when
it is on-link), then read that next hop's MAC from the neighbour table.  A missing or failed
neighbour entry is resolved by asking the kernel to probe it (``NTF_USE``, as ``ip neigh replace
... use`` would do); the caller looks again when the neighbour monitor reports the answer.

Results are plain ``Egress`` records; the backend turns them into the core's configuration.  An
unresolved real server has ``Egress.ready == False``: the core must not be given a zero MAC.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from typing import Iterable, Optional

log = logging.getLogger(__name__)

# Neighbour states (include/uapi/linux/neighbour.h).
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_NONE = 0x00
# States in which the lladdr is usable for transmission (the kernel's NUD_VALID).
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY
NTF_USE = 0x01

RTN_UNICAST = 1
RTN_LOCAL = 2

ZERO_MAC = "00:00:00:00:00:00"
ARPHRD_ETHER = 1


@dataclasses.dataclass(frozen=True)
class Egress:
    """Where frames for one real server leave the director."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    ifindex: int = 0
    ifname: str = ""
    src_mac: str = ZERO_MAC
    dst_mac: str = ZERO_MAC
    mtu: int = 0
    nexthop: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    src_addr: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None  # the kernel's choice
    local: bool = False  # the address is the director's own
    reason: str = ""  # why it is not ready, for logs

    @property
    def ready(self) -> bool:
        return self.ifindex > 0 and self.dst_mac != ZERO_MAC and not self.local


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


class Resolver:
    """Looks routes, links and neighbours up in the current network namespace (pyroute2 IPRoute)."""

    def __init__(self, ipr=None):
        if ipr is None:
            from pyroute2 import IPRoute

            ipr = IPRoute()
            self._own_ipr = True
        else:
            self._own_ipr = False
        self.ipr = ipr

    def close(self) -> None:
        if self._own_ipr:
            self.ipr.close()

    # --- links -----------------------------------------------------------------------------
    def links(self) -> dict[int, dict]:
        """ifindex -> {name, mac, mtu, up, loopback} for every interface of the namespace."""
        out = {}
        for link in self.ipr.get_links():
            flags = link.get("flags", 0)
            out[link["index"]] = {
                "name": link.get("IFLA_IFNAME"),
                "mac": link.get("IFLA_ADDRESS") or ZERO_MAC,
                "mtu": link.get("IFLA_MTU") or 1500,
                "up": bool(flags & 0x1),
                "loopback": bool(flags & 0x8),
                "kind": _link_kind(link),
                "ethernet": link.get("ifi_type") == ARPHRD_ETHER,
                "master": link.get("IFLA_MASTER") or 0,  # enslaved to a bridge or bond
            }
        return out

    def local_addresses(self, exclude_ifindex: int = 0) -> set:
        """The namespace's own addresses, leaving out those on interface `exclude_ifindex`."""
        addrs = set()
        for msg in self.ipr.get_addr():
            if exclude_ifindex and msg.get("index") == exclude_ifindex:
                continue
            text = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
            if text:
                addrs.add(ipaddress.ip_address(text))
        return addrs

    # --- one real server ---------------------------------------------------------------------
    def resolve(self, addr, links: Optional[dict] = None, probe: bool = True) -> Egress:
        addr = ipaddress.ip_address(addr)
        links = links if links is not None else self.links()
        try:
            routes = self.ipr.route("get", dst=str(addr))
        except Exception as exc:  # NetlinkError: unreachable, no route
            return Egress(addr, reason=f"no route: {exc}")
        if not routes:
            return Egress(addr, reason="no route")
        route = routes[0]
        if route.get("type") == RTN_LOCAL:
            return Egress(addr, local=True, reason="address is local to the director")
        oif = route.get("RTA_OIF") or 0
        gateway = route.get("RTA_GATEWAY")
        via = route.get("RTA_VIA")
        if not gateway and via:
            gateway = via.get("addr") if isinstance(via, dict) else None
        nexthop = ipaddress.ip_address(gateway) if gateway else addr
        prefsrc = route.get("RTA_PREFSRC")
        src_addr = ipaddress.ip_address(prefsrc) if prefsrc else None
        link = links.get(oif)
        if link is None:
            return Egress(addr, ifindex=oif, reason="egress interface vanished")
        base = dict(addr=addr, ifindex=oif, ifname=link["name"], src_mac=link["mac"],
                    mtu=_route_mtu(route) or link["mtu"], nexthop=nexthop, src_addr=src_addr)
        if link["loopback"]:
            return Egress(**base, local=True, reason="route points to loopback")
        mac = self.neighbour_mac(nexthop, oif)
        if mac is None:
            if probe:
                self.probe(nexthop, oif)
            return Egress(**base, reason=f"neighbour {nexthop} on {link['name']} not resolved yet")
        return Egress(**base, dst_mac=mac)

    def resolve_all(self, addrs: Iterable, probe: bool = True) -> dict:
        links = self.links()
        return {ipaddress.ip_address(a): self.resolve(a, links, probe) for a in set(addrs)}

    def neighbour_mac(self, nexthop, ifindex: int) -> Optional[str]:
        family = socket.AF_INET6 if nexthop.version == 6 else socket.AF_INET
        for neigh in self.ipr.get_neighbours(family=family, ifindex=ifindex, dst=str(nexthop)):
            mac = neigh.get("NDA_LLADDR")
            if mac and (neigh.get("state", 0) & NUD_VALID) and mac != ZERO_MAC:
                return mac
        return None

    def probe(self, nexthop, ifindex: int) -> None:
        """Ask the kernel to resolve ``nexthop`` (ARP / neighbour solicitation), without waiting."""
        family = socket.AF_INET6 if nexthop.version == 6 else socket.AF_INET
        try:
            self.ipr.neigh("replace", family=family, dst=str(nexthop), ifindex=ifindex,
                           flags=NTF_USE, state=NUD_NONE)
            return
        except Exception as exc:  # older kernels refuse NTF_USE without lladdr
            log.debug("NTF_USE probe for %s refused (%s); sending a datagram instead", nexthop, exc)
        # A datagram to the discard port makes the kernel resolve the next hop on its way out.
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(b"", (str(nexthop), 9))
        except OSError:
            pass


def _route_mtu(route) -> int:
    """A route's own MTU (`ip route ... mtu N`), 0 when it has none."""
    metrics = route.get("RTA_METRICS")
    if metrics:
        return metrics.get("RTAX_MTU", 0) or 0
    return 0


def _link_kind(link) -> str:
    info = link.get("IFLA_LINKINFO")
    if info:
        kind = info.get("IFLA_INFO_KIND")
        if kind:
            return kind
    return ""
