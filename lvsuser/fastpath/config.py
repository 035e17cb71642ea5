"""What the datapath core is told: the configuration both cores accept with ``Core.publish(config)``.

Theory of operation
-------------------
The core never looks anything up in the kernel.  The control side (the I/O-driver engineer's
director) gathers every fact the per-packet path needs -- the virtual services with their real
servers in kernel order, and how to reach each real server (egress interface, MACs, MTU) as the
kernel's routes and neighbours say -- and publishes it whole.  The core compiles it into its own
tables (C slots in ``lvsuser._fastpath``, objects in ``lvsuser.pyfastpath``) by applying only what
differs from the running configuration, between batches.  Connections survive a publish: a
service is the same service when its key is, a dest the same dest when its (address, port) is;
connections whose dest is gone are expired.

Everything here is a plain dataclass of model objects, ``ipaddress`` objects, ints and bytes;
``validate()`` rejects bad input with a ``ValueError`` naming the field, before the core sees it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional

from lvsuser import model

# Frame formats the drivers hand to the core.
MODE_L2 = "l2"  # Ethernet frames (AF_PACKET rings): the core rewrites MACs itself
MODE_L3 = "l3"  # bare IPv4/IPv6 packets (TUN device): the kernel routes what the core emits


class StateError(Exception):
    """A datapath state file that this core cannot adopt (another layout, other sizes, in use)."""


@dataclasses.dataclass
class DestRoute:
    """How to reach one real server address: what the kernel's route and neighbour tables say.

    ``dst_mac`` is the next hop's MAC: the real server itself for DR and for NAT/TUN on the same
    segment, else the gateway's.  ``src_mac`` is the egress interface's own MAC.  ``src_addr`` is
    the address the kernel would pick as source towards the real server (the TUN outer source).
    ``mtu`` is the route's MTU (TUN uses it to decide on fragmentation-needed).  In L3 mode the
    MACs are ignored and ``ifindex`` is the TUN device.
    """

    ifindex: int
    src_mac: bytes = b"\0" * 6
    dst_mac: bytes = b"\0" * 6
    mtu: int = 1500
    src_addr: Optional[model.IPAddress] = None


@dataclasses.dataclass
class CoreConfig:
    """One whole configuration of the datapath, published at once.

    services
        ``model.Service`` objects with ``dests`` in the kernel's list order (newest first), as the
        backend table keeps them.  Run-time fields (counters, activeconns) are ignored: the core
        keeps its own.
    routes
        Real server address -> ``DestRoute``.  A dest without a route gets no new connections (its
        packets would be dropped, counted as ``no_route``).
    local_macs
        ifindex -> the interface's MAC.  Used as source MAC of replies the core makes itself
        (ARP/ND answers, ICMP errors) and of NAT replies sent back towards clients.  NAT replies
        leave by the interface the connection's first packet came in on, to the MAC it came from
        (the client or its router): the core learns that reverse path per connection.
    proxy_vips
        ifindex -> VIPs the core answers ARP (IPv4) / neighbour solicitations (IPv6) for on that
        interface, because the VIP is not configured on the director itself.
    timeouts
        ``ipvsadm --set tcp tcpfin udp``.
    mark_rules
        ``model.MarkRule`` list, tried in order, that give packets the firewall mark that fwmark
        services match.
    mode
        ``MODE_L2`` (Ethernet frames) or ``MODE_L3`` (IP packets from a TUN device).
    """

    services: list[model.Service] = dataclasses.field(default_factory=list)
    routes: dict[model.IPAddress, DestRoute] = dataclasses.field(default_factory=dict)
    local_macs: dict[int, bytes] = dataclasses.field(default_factory=dict)
    proxy_vips: dict[int, list[model.IPAddress]] = dataclasses.field(default_factory=dict)
    timeouts: model.Timeouts = dataclasses.field(default_factory=model.Timeouts)
    mark_rules: list[model.MarkRule] = dataclasses.field(default_factory=list)
    mode: str = MODE_L2

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; the core's state is untouched then."""
        if self.mode not in (MODE_L2, MODE_L3):
            raise ValueError(f"mode must be {MODE_L2!r} or {MODE_L3!r}, not {self.mode!r}")
        seen = set()
        for svc in self.services:
            if not isinstance(svc, model.Service):
                raise ValueError(f"services: {svc!r} is not a model.Service")
            if svc.af not in (model.AF_INET, model.AF_INET6):
                raise ValueError(f"service {svc.key}: bad address family {svc.af}")
            if svc.key in seen:
                raise ValueError(f"service {svc.key} is listed twice")
            seen.add(svc.key)
            if not svc.fwmark:
                # SCTP services are accepted (ipvsadm can add them), but the cores forward only
                # TCP and UDP: SCTP packets are not matched to them.
                if svc.protocol not in (model.IPPROTO_TCP, model.IPPROTO_UDP, model.IPPROTO_SCTP):
                    raise ValueError(f"service {svc.key}: protocol {svc.protocol} not supported")
                if svc.addr is None or model.af_of(svc.addr) != svc.af:
                    raise ValueError(f"service {svc.key}: address does not match family")
            if not 0 <= svc.port <= 65535:
                raise ValueError(f"service {svc.key}: bad port {svc.port}")
            if len(svc.dests) > 65535:
                raise ValueError(f"service {svc.key}: at most 65535 real servers are supported")
            dest_ids = set()
            for dest in svc.dests:
                # a dest is its (address, port) within its service, as ip_vs_lookup_dest has it
                if (dest.addr, dest.port) in dest_ids:
                    raise ValueError(f"service {svc.key}: dest {dest.addr}:{dest.port} is listed twice")
                dest_ids.add((dest.addr, dest.port))
                if not 0 <= dest.port <= 65535:
                    raise ValueError(f"service {svc.key}: dest {dest.addr} bad port {dest.port}")
                if dest.weight < 0:
                    raise ValueError(f"service {svc.key}: dest {dest.addr} negative weight")
                if int(dest.fwd) not in (model.Forward.MASQ, model.Forward.TUNNEL,
                                         model.Forward.ROUTE, model.Forward.LOCALNODE):
                    raise ValueError(f"service {svc.key}: dest {dest.addr} bad forward {dest.fwd}")
        for addr, route in self.routes.items():
            packed_address(addr)
            if len(route.src_mac) != 6 or len(route.dst_mac) != 6:
                raise ValueError(f"route to {addr}: MACs must be 6 bytes")
            if not 68 <= route.mtu <= 65535:
                raise ValueError(f"route to {addr}: bad mtu {route.mtu}")
        for ifindex, mac in self.local_macs.items():
            if len(mac) != 6:
                raise ValueError(f"local_macs[{ifindex}]: MAC must be 6 bytes")
        for name in ("tcp", "tcp_fin", "udp"):
            if getattr(self.timeouts, name) <= 0:
                raise ValueError(f"timeouts.{name} must be positive")


def service_signature(svc: model.Service, routes: dict) -> tuple:
    """Everything of a configured service the cores use, as one comparable value; equal
    signatures mean a publish has nothing to do for that service.  ``routes`` maps packed
    addresses to ``DestRoute``.  Run-time fields (counts, stats) are not part of it."""
    dests = []
    for d in svc.dests:
        r = routes.get(d.addr.packed)
        route = None if r is None else (r.ifindex, bytes(r.src_mac), bytes(r.dst_mac), r.mtu,
                                        r.src_addr)
        dests.append((d.addr, d.port, int(d.fwd), d.weight, d.u_threshold, d.l_threshold,
                      int(d.tun_type), d.tun_port, d.tun_flags))
        dests.append(route)
    return (svc.scheduler, svc.flags, svc.timeout, svc.netmask, svc.pe_name, tuple(dests))


def private_copy(svc: model.Service) -> model.Service:
    """A core's own copy of a configured service: new Service and Dest objects (so later
    changes to the caller's objects do not reach the core) sharing the immutable field values,
    with fresh stats.  Much cheaper than a deepcopy, and O(dests of that service)."""
    return dataclasses.replace(
        svc, stats=model.Stats(),
        dests=[dataclasses.replace(d, stats=model.Stats()) for d in svc.dests])


def packed_address(addr) -> bytes:
    """The packed form of an address given as an ipaddress object or as text/int."""
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return addr.packed
    return ipaddress.ip_address(addr).packed


def packed_routes(routes: dict) -> dict:
    """``CoreConfig.routes`` keyed by packed address, as both cores look routes up."""
    return {packed_address(a): r for a, r in routes.items()}
