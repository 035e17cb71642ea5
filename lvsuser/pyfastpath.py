"""The datapath core in plain Python: the readable reference of ``lvsuser._fastpath.Core``.

Theory of operation
-------------------
A sans-IO core: ``process(frame, ifindex, now)`` takes one frame (Ethernet in L2 mode, a bare IP
packet in L3 mode) and returns ``(verdict, out_frame, out_ifindex)``:

  PASS   not ours (or kernel IPVS would hand it to the local stack): the driver leaves it alone;
  DROP   ours, and dropped (malformed, no real server, table full...): see ``counters()``;
  TX     send ``out_frame`` on ``out_ifindex`` (a forwarded packet);
  REPLY  send ``out_frame`` back out of the arrival interface (ARP/ND answers, ICMP errors).

It follows kernel IPVS (net/netfilter/ipvs/): a packet to a virtual service is looked up in the
connection table by (protocol, caddr, cport, vaddr, vport); a miss on a schedulable packet (TCP
SYN, any UDP) asks the service's scheduler for a real server, creates a connection and binds its
forwarding method once (ip_vs_bind_xmit).  NAT replies from a real server are found by
(protocol, daddr, dport, caddr, cport) and get their source put back to the VIP.  TCP state moves
by ``TCP_STATES`` (tcp_states[] of ip_vs_proto_tcp.c) and each packet re-arms the connection's
timer with its state's timeout (ip_vs_conn_put).  Counts per real server move exactly where the
kernel moves them: a new connection is inactive, it becomes active only in ESTABLISHED
(set_tcp_state), templates count as persistconns (ip_vs_bind_dest).

Also as the kernel: ICMP errors we send ourselves (time exceeded, port unreachable when no real
server is left, fragmentation needed) come from the VIP and pass icmp_global_allow's rate limit
(PMTU messages exempt); `-o` UDP services keep no connection; local-node dests are handed to
the director's own stack (PASS); persistence templates are <proto, caddr & netmask, 0, vaddr or
fwmark, vport or 0> and outlive their timers while they control connections.

Differences from the kernel, on purpose:
  * no reassembly: fragments to a VIP are dropped and counted (the kernel would reassemble);
  * no conntrack: a client reusing a port whose old connection is in TIME_WAIT/CLOSE is
    rescheduled at once (conn_reuse_mode without the drop that costs kube-proxy users 1 s);
  * too-big packets without DF are dropped and counted instead of fragmented;
  * IP IDs we must invent (ICMP errors, tunnels without DF) are 0 / copied from the inner packet,
    where the kernel draws a hashed random ID: deterministic output for the golden tables;
  * a NAT reply whose TTL runs out is dropped and counted (ip_forward would send time exceeded
    from the director's own address).

ICMP errors about our IPv4 IP-in-IP packets are relayed to the client from the VIP, a reported
MTU less the tunnel's 20 bytes (ip_vs_in_icmp); relayed frames carry no VLAN tag.

Configuration changes are deltas (``publish``): a service is the same service while its key
is, a dest the same dest object while its (address, port) is, so an edit changes the object in
place and its connections and counters stay.  A deleted dest is only dropped from its service;
a connection bound to a dest that is no longer its service's is "gone": not listed, not
counted, freed by the first lookup or sweep that meets it (the compiled core's slots with
reference counts, without the memory management).  Schedulers hear add_dest / del_dest /
upd_dest for their own service's changes only.

Every helper returns plain values; no exception escapes ``process``: anything unexpected in a
frame is a counted drop.
"""
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import struct
from typing import Callable, Optional

from lvsuser import model
from lvsuser.schedulers.base import PacketInfo, report_schedule_error
from lvsuser.fastpath.config import (MODE_L2, CoreConfig, DestRoute, StateError, packed_routes,
                                     service_signature)
from lvsuser.fastpath.constants import (COUNTER_NAMES, EST_INTERVAL, EXPIRE_MAX_FREED, EXPIRE_SLOTS,
                                        TCP_STATE_NAMES, addr_from_bytes, default_scheduler_factory,
                                        tcp_timeouts)

__all__ = ["Core", "PASS", "DROP", "TX", "REPLY", "VERDICT_NAMES", "COUNTER_NAMES",
           "TCP_STATE_NAMES", "TCP_STATES", "EST_INTERVAL", "EXPIRE_SLOTS", "EXPIRE_MAX_FREED",
           "tcp_timeouts", "tcp_event", "CoreConfig", "DestRoute"]

# ------------------------------------------------------------------------------ public constants
PASS = 0
DROP = 1
TX = 2
REPLY = 3
VERDICT_NAMES = {PASS: "PASS", DROP: "DROP", TX: "TX", REPLY: "REPLY"}

# Per-reason counters (COUNTER_NAMES) and the names below come from fastpath/constants.py,
# which both cores share.

# TCP states (IP_VS_TCP_S_*) and their names in listings.
S_NONE, S_ESTABLISHED, S_SYN_SENT, S_SYN_RECV, S_FIN_WAIT, S_TIME_WAIT, S_CLOSE, S_CLOSE_WAIT, \
    S_LAST_ACK, S_LISTEN, S_SYNACK = range(11)

# tcp_states[] of ip_vs_proto_tcp.c: rows (direction offset + event), columns the current state.
_sNO, _sES, _sSS, _sSR, _sFW, _sTW, _sCL, _sCW, _sLA, _sLI, _sSA = range(11)
TCP_STATES = (
    # INPUT (client -> real server, when the director also sees replies)
    (_sSR, _sES, _sES, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR),  # syn
    (_sCL, _sCW, _sSS, _sTW, _sTW, _sTW, _sCL, _sCW, _sLA, _sLI, _sTW),  # fin
    (_sCL, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sCL, _sLI, _sES),  # ack
    (_sCL, _sCL, _sCL, _sSR, _sCL, _sCL, _sCL, _sCL, _sLA, _sLI, _sSR),  # rst
    # OUTPUT (real server -> client, NAT)
    (_sSS, _sES, _sSS, _sSR, _sSS, _sSS, _sSS, _sSS, _sSS, _sLI, _sSR),
    (_sTW, _sFW, _sSS, _sTW, _sFW, _sTW, _sCL, _sTW, _sLA, _sLI, _sTW),
    (_sES, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sLA, _sES, _sES),
    (_sCL, _sCL, _sSS, _sCL, _sCL, _sTW, _sCL, _sCL, _sCL, _sCL, _sCL),
    # INPUT-ONLY (DR/TUN: the director never sees the replies)
    (_sSR, _sES, _sES, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR, _sSR),
    (_sCL, _sFW, _sSS, _sTW, _sFW, _sTW, _sCL, _sCW, _sLA, _sLI, _sTW),
    (_sCL, _sES, _sSS, _sES, _sFW, _sTW, _sCL, _sCW, _sCL, _sLI, _sES),
    (_sCL, _sCL, _sCL, _sSR, _sCL, _sCL, _sCL, _sCL, _sLA, _sLI, _sCL),
)
DIR_INPUT, DIR_OUTPUT, DIR_INPUT_ONLY = 0, 4, 8


def tcp_event(flags: int) -> int:
    """tcp_state_idx: rst 3, syn 0, fin 1, ack 2, else -1 (no transition)."""
    if flags & 0x04:
        return 3
    if flags & 0x02:
        return 0
    if flags & 0x01:
        return 1
    if flags & 0x10:
        return 2
    return -1


# Connection flags (IP_VS_CONN_F_*) we keep.
CONN_F_TEMPLATE = 0x1000
CONN_F_NOOUTPUT = 0x0400
CONN_F_INACTIVE = 0x0800

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q = 0x0800, 0x86DD, 0x0806, 0x8100
IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6 = 1, 58, 4, 41
ICMP_DEFAULT_TTL = 64  # net.ipv4.ip_default_ttl / IPv6 hop limit for our own ICMP errors
ICMP4_QUOTE_MAX = 576 - 20 - 8  # icmp_send: room in a 576-byte datagram
ICMP6_QUOTE_MAX = 1280 - 40 - 8  # icmp6_send: the IPv6 minimum MTU
FTP_PORT = 21  # ip_vs_sched_persist keys FTP templates without the port
ICMP_PER_SEC, ICMP_BURST, ICMP_REFILL_MS = 1000, 50, 20  # net.ipv4.icmp_msgs_per_sec/_burst, HZ/50




# ------------------------------------------------------------------------------ checksums
def csum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def csum_bytes(data: bytes, initial: int = 0) -> int:
    """One's complement sum of 16-bit words (RFC 1071), not complemented."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    return csum_fold(total)


def csum_replace(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over equal-length, even-sized old/new words."""
    total = (~check) & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~((old[i] << 8) | old[i + 1])) & 0xFFFF
        total += (new[i] << 8) | new[i + 1]
    return (~csum_fold(total)) & 0xFFFF


def csum_replace_partial(field: int, old: bytes, new: bytes) -> int:
    """CHECKSUM_PARTIAL: the field holds the uncomplemented pseudo-header sum; add the change."""
    return (~csum_replace((~field) & 0xFFFF, old, new)) & 0xFFFF


def pseudo_sum(af: int, saddr: bytes, daddr: bytes, proto: int, length: int) -> int:
    if af == model.AF_INET:
        return csum_bytes(saddr + daddr + struct.pack("!BBH", 0, proto, length))
    return csum_bytes(saddr + daddr + struct.pack("!IxxxB", length, proto))


def ip4_header_checksum(header: bytearray) -> int:
    header[10:12] = b"\0\0"
    return (~csum_bytes(bytes(header))) & 0xFFFF


# ------------------------------------------------------------------------------ parsing
class _Packet:
    """The facts of one parsed frame; offsets index ``buf`` (a bytearray copy of the frame)."""

    __slots__ = ("buf", "l3", "af", "ip_end", "proto", "saddr", "daddr", "l4", "sport", "dport",
                 "tcp_flags", "fragment", "hl_off", "payload_len_off")

    def __init__(self, buf: bytearray, l3: int):
        self.buf = buf
        self.l3 = l3
        self.fragment = False
        self.sport = self.dport = 0
        self.tcp_flags = 0


class _Reject(Exception):
    """Internal: a frame is dropped for the counter named in args[0]."""


def _parse_ip(buf: bytearray, l3: int, af_hint: int, check_csum: bool = True,
              quoted: bool = False) -> _Packet:
    """Parse the IP header at l3 (and L4 ports when present); raise _Reject(counter).
    `quoted`: a packet quoted in an ICMP error, usually cut short -- its length is clipped."""
    pkt = _Packet(buf, l3)
    avail = len(buf) - l3
    if avail < 1:
        raise _Reject("ip_truncated")
    version = buf[l3] >> 4
    if af_hint == model.AF_INET or (af_hint == 0 and version == 4):
        if avail < 20:
            raise _Reject("ip_truncated")
        if version != 4:
            raise _Reject("ip_bad_version")
        ihl = (buf[l3] & 0x0F) * 4
        total = (buf[l3 + 2] << 8) | buf[l3 + 3]
        if ihl < 20 or total < ihl:
            raise _Reject("ip_bad_header")
        if total > avail:
            if not quoted:
                raise _Reject("ip_truncated")
            total = avail
        if check_csum and csum_bytes(bytes(buf[l3:l3 + ihl])) != 0xFFFF:
            raise _Reject("ip_bad_checksum")
        pkt.af = model.AF_INET
        pkt.ip_end = l3 + total
        pkt.proto = buf[l3 + 9]
        pkt.saddr = bytes(buf[l3 + 12:l3 + 16])
        pkt.daddr = bytes(buf[l3 + 16:l3 + 20])
        frag = ((buf[l3 + 6] << 8) | buf[l3 + 7])
        pkt.fragment = bool(frag & 0x3FFF)
        pkt.l4 = l3 + ihl
        pkt.hl_off = l3 + 8
    elif af_hint == model.AF_INET6 or (af_hint == 0 and version == 6):
        if avail < 40:
            raise _Reject("ip_truncated")
        if version != 6:
            raise _Reject("ip_bad_version")
        payload = (buf[l3 + 4] << 8) | buf[l3 + 5]
        if 40 + payload > avail:
            if not quoted:
                raise _Reject("ip_truncated")
            payload = avail - 40
        pkt.af = model.AF_INET6
        pkt.ip_end = l3 + 40 + payload
        pkt.saddr = bytes(buf[l3 + 8:l3 + 24])
        pkt.daddr = bytes(buf[l3 + 24:l3 + 40])
        pkt.hl_off = l3 + 7
        nexthdr = buf[l3 + 6]
        off = l3 + 40
        for _ in range(8):  # bounded walk of the extension header chain
            if nexthdr in (0, 43, 60):  # hop-by-hop, routing, destination options
                if off + 8 > pkt.ip_end:
                    raise _Reject("ip6_bad_ext")
                nexthdr, off = buf[off], off + (buf[off + 1] + 1) * 8
            elif nexthdr == 44:  # fragment header
                if off + 8 > pkt.ip_end:
                    raise _Reject("ip6_bad_ext")
                pkt.fragment = bool(((buf[off + 2] << 8) | buf[off + 3]) & 0xFFF9)
                nexthdr, off = buf[off], off + 8
            else:
                break
        else:
            raise _Reject("ip6_bad_ext")
        if off > pkt.ip_end:
            raise _Reject("ip6_bad_ext")
        pkt.proto = nexthdr
        pkt.l4 = off
    else:
        raise _Reject("ip_bad_version")
    if not pkt.fragment and pkt.proto in (model.IPPROTO_TCP, model.IPPROTO_UDP):
        need = 20 if pkt.proto == model.IPPROTO_TCP else 8
        if pkt.l4 + need > pkt.ip_end:
            pkt.sport = -1  # ports unknown: truncated L4
        else:
            pkt.sport = (buf[pkt.l4] << 8) | buf[pkt.l4 + 1]
            pkt.dport = (buf[pkt.l4 + 2] << 8) | buf[pkt.l4 + 3]
            if pkt.proto == model.IPPROTO_TCP:
                if (buf[pkt.l4 + 12] >> 4) * 4 < 20:
                    pkt.sport = -1
                pkt.tcp_flags = buf[pkt.l4 + 13]
    return pkt


def _ms(now: float) -> int:
    """Times are kept in whole milliseconds, as the compiled core keeps them, so both cores
    expire a connection at the same instant."""
    return int(now * 1000)


# Connection listings: rows per chunk by default, and at most (Core.connections_chunk).
LIST_CHUNK = 4096
LIST_CHUNK_MAX = 65536

_addr = addr_from_bytes


# ------------------------------------------------------------------------------ connection state
class _Conn:
    __slots__ = ("protocol", "af", "caddr", "cport", "vaddr", "vport", "daddr", "dport", "svc",
                 "dest", "fwd", "state", "flags", "timeout", "expires", "in_ifindex", "client_mac",
                 "local_mac", "control", "n_control", "tkey", "last_end")

    def in_key(self):
        return (self.protocol, self.af, self.caddr, self.cport, self.vaddr, self.vport)

    def out_key(self):
        return (self.protocol, self.af, self.daddr, self.dport, self.caddr, self.cport)


class _Estimator:
    """ip_vs_est: a 2-second sample, EWMA with weight 1/4, kept scaled as the kernel keeps it."""

    __slots__ = ("last", "cps", "inpps", "outpps", "inbps", "outbps")

    def __init__(self):
        self.last = [0, 0, 0, 0, 0]
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0

    def tick(self, stats: model.Stats) -> None:
        now = [stats.conns, stats.inpkts, stats.outpkts, stats.inbytes, stats.outbytes]
        rates = [(now[i] - self.last[i]) << (9 if i < 3 else 4) for i in range(5)]
        self.last = now
        self.cps += (rates[0] - self.cps) >> 2
        self.inpps += (rates[1] - self.inpps) >> 2
        self.outpps += (rates[2] - self.outpps) >> 2
        self.inbps += (rates[3] - self.inbps) >> 2
        self.outbps += (rates[4] - self.outbps) >> 2

    def fill(self, stats: model.Stats) -> None:
        stats.cps = (self.cps + 0x1FF) >> 10
        stats.inpps = (self.inpps + 0x1FF) >> 10
        stats.outpps = (self.outpps + 0x1FF) >> 10
        stats.inbps = (self.inbps + 0xF) >> 5
        stats.outbps = (self.outbps + 0xF) >> 5


class _ServiceState:
    """A running service: a private copy whose dests carry the live counters.  It is edited in
    place by publish; a dest object stays while its (address, port) stays, and a connection is
    bound to the dest object itself (its "slot")."""

    def __init__(self, svc: model.Service, scheduler, sig):
        self.svc = svc
        self.scheduler = scheduler
        self.sig = sig                  # config.service_signature of what was published
        self.by_id = {(d.addr, d.port): d for d in svc.dests}
        self.est = _Estimator()
        self.dest_est = {}  # (addr, port) -> _Estimator


def _fresh_dest(dest: model.Dest) -> model.Dest:
    """A new dest of the running config: the configured fields, run-time state from zero."""
    return dataclasses.replace(dest, activeconns=0, inactconns=0, persistconns=0,
                               flags=model.DEST_F_AVAILABLE, stats=model.Stats())


_DEST_CONFIG_FIELDS = ("fwd", "weight", "u_threshold", "l_threshold", "tun_type", "tun_port",
                       "tun_flags", "af")


def _tell_scheduler(scheduler, hook: str, dest: Optional[model.Dest]) -> bool:
    """Call the scheduler's add_dest/del_dest/upd_dest (the kernel's hooks), else update();
    False if it raised (the caller then starts a fresh scheduler)."""
    try:
        method = getattr(scheduler, hook, None) if dest is not None else None
        if method is not None:
            method(dest)
        else:
            scheduler.update()
    except Exception:
        return False
    return True


# Kept for callers of the old private name; the factory lives in fastpath/constants.py.
_default_scheduler_factory = default_scheduler_factory


class Core:
    """The datapath core (see the module docstring)."""

    def __init__(self, max_conns: int = 1 << 20,
                 scheduler_factory: Optional[Callable[[str, model.Service], object]] = None,
                 state_path=None, fresh: bool = False):
        if max_conns <= 0:
            raise ValueError("max_conns must be positive")
        if state_path is not None:
            raise StateError(f"the pure-Python core keeps no state file ({state_path}): use "
                             "lvsuser._fastpath.Core for state that outlives the process")
        self.max_conns = max_conns
        self.state_path = None        # the same attributes as the compiled core's
        self.adopted = False
        self._scheduler_factory = scheduler_factory or default_scheduler_factory
        self._config = CoreConfig()
        self._services: dict = {}     # ServiceKey -> _ServiceState, in config order
        self._by_addr: dict = {}      # (af, proto, addr bytes, port) -> _ServiceState
        self._by_mark: dict = {}      # (af, mark) -> _ServiceState
        self._routes: dict = {}       # addr bytes -> DestRoute
        self._proxy: dict = {}        # (ifindex, addr bytes) -> True
        self._conn_in: dict = {}
        self._conn_out: dict = {}
        self._templates: dict = {}
        self._dead = 0                # entries whose dest is gone, not freed yet
        self._orphans: dict = {}      # id -> such a template displaced from _templates
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._tcp_timeouts = tcp_timeouts(model.Timeouts())
        self._udp_timeout = model.Timeouts().udp
        self._next_est = None
        self._icmp_credit = ICMP_BURST
        self._icmp_stamp = 0
        self.generation = 0

    # ---------------------------------------------------------------- configuration
    def publish(self, config: CoreConfig) -> int:
        """Apply what differs between `config` and the running configuration, in place.

        A service is the same when its key is, a dest when its (address, port) is.  Unchanged
        services are not touched; edited dests keep their counters and connections; a deleted
        dest is only dropped from its service: its connections are not there any more (a
        lookup or the sweep frees them, listings skip them) -- no walk over the connection
        table.  The scheduler of a changed service hears of each change (del_dest, upd_dest,
        add_dest, else update()).  Returns the new generation.  Bad input raises ValueError
        before anything changes."""
        config.validate()
        routes = packed_routes(config.routes)
        plan = []
        for svc_in in config.services:
            sig = service_signature(svc_in, routes)
            state = self._services.get(svc_in.key)
            if state is None or state.sig != sig:
                plan.append((svc_in, state, sig))
        keys = {svc.key for svc in config.services}
        for key, state in self._services.items():
            if key not in keys:
                for dest in state.svc.dests:
                    self._retire_dest(dest)
        changed = {}
        for svc_in, state, sig in plan:
            changed[svc_in.key] = self._apply_service(svc_in, state, sig, routes)
        services, by_addr, by_mark = {}, {}, {}
        for svc_in in config.services:
            state = changed.get(svc_in.key) or self._services[svc_in.key]
            services[svc_in.key] = state
            if state.svc.fwmark:
                by_mark[(state.svc.af, state.svc.fwmark)] = state
            else:
                by_addr[(state.svc.af, state.svc.protocol, state.svc.addr.packed, state.svc.port)] = state
        self._services, self._by_addr, self._by_mark = services, by_addr, by_mark
        self._routes = routes
        self._proxy = {(ifx, ipaddress.ip_address(a).packed): True
                       for ifx, addrs in config.proxy_vips.items() for a in addrs}
        self._config = config
        self._tcp_timeouts = tcp_timeouts(config.timeouts)
        self._udp_timeout = config.timeouts.udp
        self.generation += 1
        return self.generation

    def running_generation(self) -> int:
        """The generation the datapath runs: this core applies a publish at once."""
        return self.generation

    def _retire_dest(self, dest: model.Dest) -> None:
        """ip_vs_del_dest: what is bound to it is gone from now on (counted), freed later."""
        bound = dest.activeconns + dest.inactconns + dest.persistconns
        self._counters["conn_dest_gone"] += bound
        self._dead += bound
        dest.flags &= ~model.DEST_F_AVAILABLE

    def _apply_service(self, svc_in: model.Service, state: Optional[_ServiceState], sig,
                       routes: dict):
        """A new service, or `state` brought to `svc_in` in place; returns the state."""
        if state is None:
            svc = dataclasses.replace(svc_in, dests=[_fresh_dest(d) for d in svc_in.dests],
                                      stats=model.Stats())
            try:
                scheduler = self._scheduler_factory(svc.scheduler, svc)
            except Exception:  # unknown scheduler: the service gets no new connections
                scheduler = None
            return _ServiceState(svc, scheduler, sig)
        svc = state.svc
        same_scheduler = state.scheduler is not None and svc.scheduler == svc_in.scheduler
        scheduler = state.scheduler if same_scheduler else None
        svc.scheduler, svc.flags, svc.timeout = svc_in.scheduler, svc_in.flags, svc_in.timeout
        svc.netmask, svc.pe_name = svc_in.netmask, svc_in.pe_name
        # In the compiled core's order, so that schedulers see the same lists in both cores:
        # 1. deleted dests leave the list one by one, each told with del_dest;
        ids = {(d.addr, d.port) for d in svc_in.dests}
        removed = [d for key, d in state.by_id.items() if key not in ids]
        for dest in removed:
            svc.dests.remove(dest)
            self._retire_dest(dest)
            state.dest_est.pop((dest.addr, dest.port), None)
            if scheduler is not None and not _tell_scheduler(scheduler, "del_dest", dest):
                scheduler = None
        kept_order = [id(d) for d in svc.dests]
        # 2. edits in place (config, route, overload), new dests made;
        new_list, added, edited = [], [], []
        for dest_in in svc_in.dests:
            dest = state.by_id.get((dest_in.addr, dest_in.port))
            if dest is None:
                dest = _fresh_dest(dest_in)
                added.append(dest)
                self._settle_overload(dest)
            else:
                before = tuple(getattr(dest, f) for f in _DEST_CONFIG_FIELDS) + (dest.flags,)
                for field in _DEST_CONFIG_FIELDS:
                    setattr(dest, field, getattr(dest_in, field))
                self._settle_overload(dest)
                packed = dest.addr.packed
                if tuple(getattr(dest, f) for f in _DEST_CONFIG_FIELDS) + (dest.flags,) != before \
                        or self._routes.get(packed) != routes.get(packed):
                    edited.append(dest)
            new_list.append(dest)
        # 3. the final list (the scheduler reads this very list), then upd_dest, add_dest, and
        #    update() if the kept dests changed order (the kernel never reorders; a config may)
        fresh = {id(d) for d in added}
        reordered = [id(d) for d in new_list if id(d) not in fresh] != kept_order
        svc.dests[:] = new_list
        state.by_id = {(d.addr, d.port): d for d in new_list}
        state.sig = sig
        calls = ([("upd_dest", d) for d in edited] + [("add_dest", d) for d in added]
                 + ([("update", None)] if reordered else []))
        for hook, dest in calls:
            if scheduler is not None and not _tell_scheduler(scheduler, hook, dest):
                scheduler = None
        if scheduler is None:
            try:
                scheduler = self._scheduler_factory(svc.scheduler, svc)
            except Exception:
                scheduler = None
        state.scheduler = scheduler
        return state

    def _settle_overload(self, dest: model.Dest) -> None:
        """Overload by the thresholds, as bind (set) and unbind (clear) would leave it."""
        total = dest.activeconns + dest.inactconns
        if dest.u_threshold and total >= dest.u_threshold:
            dest.flags |= model.DEST_F_OVERLOAD
        else:
            self._clear_overload(dest)

    def _gone(self, conn: _Conn) -> bool:
        """Its real server was deleted (or its service): the entry is not there any more."""
        dest = conn.dest
        if dest is None:
            return False
        state = self._services.get(conn.svc)
        return state is None or state.by_id.get((dest.addr, dest.port)) is not dest

    def _reap(self, conn: _Conn, now: float) -> bool:
        """Free `conn` if its dest is gone (a template once it controls nothing); True if gone."""
        if not self._gone(conn):
            return False
        if not (conn.flags & CONN_F_TEMPLATE and conn.n_control):
            self._expire_conn(conn, now)
        return True

    # ---------------------------------------------------------------- the packet path
    def process(self, frame: bytes, ifindex: int, now: float, csum_partial: bool = False):
        self._counters["rx"] += 1
        try:
            return self._process(bytearray(frame), ifindex, now, csum_partial)
        except _Reject as reject:
            self._counters[reject.args[0]] += 1
            return (DROP, None, 0)

    def _process(self, buf: bytearray, ifindex: int, now: float, csum_partial: bool):
        l2 = self._config.mode == MODE_L2
        l3 = 0
        if l2:
            if len(buf) < 14:
                raise _Reject("eth_truncated")
            ethertype = (buf[12] << 8) | buf[13]
            l3 = 14
            if ethertype == ETH_P_8021Q:
                if len(buf) < 18:
                    raise _Reject("eth_truncated")
                ethertype = (buf[16] << 8) | buf[17]
                l3 = 18
            if ethertype == ETH_P_ARP:
                return self._arp(buf, l3, ifindex)
            if ethertype == ETH_P_IP:
                af = model.AF_INET
            elif ethertype == ETH_P_IPV6:
                af = model.AF_INET6
            else:
                self._counters["pass_not_ip"] += 1
                return (PASS, None, 0)
        else:
            if not buf:
                raise _Reject("ip_truncated")
            af = {4: model.AF_INET, 6: model.AF_INET6}.get(buf[0] >> 4)
            if af is None:
                raise _Reject("ip_bad_version")
        pkt = _parse_ip(buf, l3, af)
        del buf[pkt.ip_end:]  # Ethernet padding is not part of the packet
        if pkt.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and not pkt.fragment:
            if pkt.af == model.AF_INET6 and pkt.proto == IPPROTO_ICMPV6 and l2:
                verdict = self._maybe_nd(pkt, ifindex)
                if verdict is not None:
                    return verdict
            return self._icmp(pkt, ifindex, now)
        if pkt.proto in (model.IPPROTO_TCP, model.IPPROTO_UDP) and not pkt.fragment and pkt.sport >= 0:
            conn = self._conn_out.get((pkt.proto, pkt.af, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport))
            if conn is not None and self._reap(conn, now):
                conn = None
            if conn is not None and conn.expires > _ms(now):
                return self._reply_out(pkt, conn, now, csum_partial)
        mark = self._mark_of(pkt)
        state = self._find_service(pkt, mark)
        if state is None and pkt.fragment and self._is_vip(pkt):
            raise _Reject("fragment")  # a fragment carries no ports: any service on the VIP
        if state is None and pkt.sport < 0 and pkt.proto in (model.IPPROTO_TCP, model.IPPROTO_UDP) \
                and self._is_vip(pkt):
            raise _Reject("l4_truncated")  # no ports to find its service by; the kernel drops it too
        if state is None:
            self._counters["pass_not_service"] += 1
            return (PASS, None, 0)
        if pkt.fragment:
            raise _Reject("fragment")
        if pkt.proto not in (model.IPPROTO_TCP, model.IPPROTO_UDP):
            raise _Reject("l4_unsupported")
        if pkt.sport < 0:
            raise _Reject("l4_truncated")
        key = (pkt.proto, pkt.af, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        conn = self._conn_in.get(key)
        if conn is not None and self._reap(conn, now):
            conn = None  # its real server was deleted: the connection is not there any more
        if conn is not None and conn.expires <= _ms(now):
            self._counters["conn_expired"] += 1
            self._expire_conn(conn, now)
            conn = None
        if conn is not None and pkt.proto == model.IPPROTO_TCP and pkt.tcp_flags & 0x02 \
                and conn.control is None and conn.state in (S_TIME_WAIT, S_CLOSE):
            # conn_reuse_mode: a new SYN on a finished connection is a new connection.
            self._counters["conn_reused"] += 1
            self._expire_conn(conn, now)
            conn = None
        if conn is None:
            if pkt.proto == model.IPPROTO_TCP and not (pkt.tcp_flags & 0x02 and not pkt.tcp_flags & 0x04):
                self._counters["tcp_not_syn"] += 1
                return (PASS, None, 0)
            result = self._schedule(state, pkt, buf, ifindex, now)
            if not isinstance(result, _Conn):
                return result
            conn = result
        verdict = self._forward_in(pkt, conn, ifindex, now, csum_partial)
        if state.svc.flags & model.SVC_F_ONEPACKET and pkt.proto == model.IPPROTO_UDP:
            # -o: the connection serves this one datagram (IP_VS_CONN_F_ONE_PACKET)
            self._counters["one_packet"] += 1
            self._expire_conn(conn, now)
        return verdict

    # ---------------------------------------------------------------- lookups
    def _mark_of(self, pkt: _Packet) -> int:
        if not self._config.mark_rules:
            return 0
        daddr, saddr = _addr(pkt.af, pkt.daddr), _addr(pkt.af, pkt.saddr)
        for rule in self._config.mark_rules:
            if rule.dst_net.version != daddr.version or daddr not in rule.dst_net:
                continue
            if rule.protocol and rule.protocol != pkt.proto:
                continue
            if (rule.dport_lo, rule.dport_hi) != (0, 65535):
                if pkt.proto not in (model.IPPROTO_TCP, model.IPPROTO_UDP) or pkt.sport < 0 \
                        or not rule.dport_lo <= pkt.dport <= rule.dport_hi:
                    continue
            if rule.src_net is not None and (rule.src_net.version != saddr.version
                                             or saddr not in rule.src_net):
                continue
            return rule.mark
        return 0

    def _is_vip(self, pkt: _Packet) -> bool:
        return any(key[0] == pkt.af and key[1] == pkt.proto and key[2] == pkt.daddr
                   for key in self._by_addr)

    def _find_service(self, pkt: _Packet, mark: int):
        """ip_vs_service_find: fwmark first, then (proto, addr, port), then the port-zero service."""
        if mark:
            state = self._by_mark.get((pkt.af, mark))
            if state is not None:
                return state
        port = pkt.dport if pkt.sport >= 0 else 0
        state = self._by_addr.get((pkt.af, pkt.proto, pkt.daddr, port))
        if state is None:
            state = self._by_addr.get((pkt.af, pkt.proto, pkt.daddr, 0))
        return state

    # ---------------------------------------------------------------- scheduling
    def _pick(self, state: _ServiceState, pkt: _Packet, now: float):
        if state.scheduler is None:
            return None, "no_scheduler"
        info = PacketInfo(pkt.af, pkt.proto, _addr(pkt.af, pkt.saddr), pkt.sport,
                       _addr(pkt.af, pkt.daddr), pkt.dport)
        try:
            dest = state.scheduler.schedule(info, now)
        except Exception as exc:  # a broken plugin costs its connection a dest, not the datapath
            self._counters["scheduler_error"] += 1
            report_schedule_error(state.scheduler, state.svc, exc)
            dest = None
        if dest is not None and not any(dest is d for d in state.svc.dests):
            dest = None  # not one of this service's dests
        return dest, None if dest is not None else "no_dest"

    def _schedule(self, state: _ServiceState, pkt: _Packet, buf, ifindex, now):
        svc = state.svc
        template = None
        if svc.persistent:
            tkey = self._template_key(svc, pkt)
            template = self._templates.get(tkey)
            if template is not None and self._reap(template, now):
                template = None
            if template is not None and (template.expires <= _ms(now) and not template.n_control):
                self._expire_conn(template, now)
                template = None
            if template is not None and template.dest is not None:
                dest = template.dest
            else:
                dest, why = self._pick(state, pkt, now)
                if dest is None:
                    return self._leave(why, pkt, buf, ifindex, now)
                if not self._has_route(dest):
                    raise _Reject("no_route")
                self._make_room(now)
                tport = dest.port if (pkt.dport == svc.port and svc.port != FTP_PORT) else 0
                template = self._new_conn(state, dest, tkey[0], pkt.af, tkey[2], 0, tkey[3], tkey[4],
                                          tport, CONN_F_TEMPLATE, ifindex, buf, now)
                template.tkey = tkey
                template.timeout = svc.timeout
                template.expires = _ms(now) + svc.timeout * 1000
                displaced = self._templates.get(tkey)
                if displaced is not None:
                    # a template of a deleted real server that still controls connections:
                    # kept aside until the last of them goes (as it stays in the C table)
                    self._orphans[id(displaced)] = displaced
                self._templates[tkey] = template
            dport = dest.port if (pkt.dport == svc.port and dest.port) else pkt.dport
        else:
            dest, why = self._pick(state, pkt, now)
            if dest is None:
                return self._leave(why, pkt, buf, ifindex, now)
            dport = dest.port or pkt.dport
        if not self._has_route(dest):
            raise _Reject("no_route")
        self._make_room(now)
        conn = self._new_conn(state, dest, pkt.proto, pkt.af, pkt.saddr, pkt.sport, pkt.daddr,
                              pkt.dport, dport, 0, ifindex, buf, now)
        if template is not None:
            conn.control = template
            template.n_control += 1
            template.expires = _ms(now) + template.timeout * 1000  # ip_vs_conn_put re-arms it
        svc.stats.conns += 1
        dest.stats.conns += 1
        self._counters["conn_new"] += 1
        return conn

    def _make_room(self, now: float) -> None:
        """A full table first reclaims what has expired (as the C core's extra sweep), then refuses."""
        if len(self._conn_in) + len(self._templates) >= self.max_conns:
            self._sweep(now)
            if len(self._conn_in) + len(self._templates) >= self.max_conns:
                raise _Reject("table_full")

    def _template_key(self, svc: model.Service, pkt: _Packet):
        """ip_vs_sched_persist: <proto, caddr & netmask, 0, vaddr or fwmark, vport or 0>."""
        if pkt.af == model.AF_INET:
            mask = struct.pack("!I", svc.netmask & 0xFFFFFFFF)
        else:
            plen = svc.netmask if svc.netmask <= 128 else 128
            mask = ipaddress.IPv6Network(f"::/{plen}").netmask.packed
        snet = bytes(a & b for a, b in zip(pkt.saddr, mask))
        if svc.fwmark:
            vaddr = struct.pack("!I", svc.fwmark) + b"\0" * (len(pkt.daddr) - 4)
            return (0, pkt.af, snet, vaddr, 0)
        if pkt.dport == svc.port and svc.port != FTP_PORT:  # FTP: one template for control and data
            return (pkt.proto, pkt.af, snet, pkt.daddr, pkt.dport)
        return (pkt.proto, pkt.af, snet, pkt.daddr, 0)

    def _leave(self, why: str, pkt: _Packet, buf, ifindex, now: float):
        """ip_vs_leave: no real server -> ICMP port unreachable to the client, drop."""
        self._counters[why] += 1
        if why == "no_scheduler":
            return (DROP, None, 0)
        if pkt.af == model.AF_INET:
            return self._icmp_error(pkt, ifindex, 3, 3, 0, now)
        return self._icmp_error(pkt, ifindex, 1, 4, 0, now)

    def _new_conn(self, state, dest, proto, af, caddr, cport, vaddr, vport, dport, flags,
                  ifindex, buf, now) -> _Conn:
        conn = _Conn()
        conn.protocol, conn.af = proto, af
        conn.caddr, conn.cport, conn.vaddr, conn.vport = caddr, cport, vaddr, vport
        conn.daddr, conn.dport = dest.addr.packed, dport
        conn.svc, conn.dest, conn.fwd = state.svc.key, dest, int(dest.fwd)
        conn.state = S_NONE
        conn.flags = flags | CONN_F_INACTIVE
        if conn.fwd != model.Forward.MASQ:
            conn.flags |= CONN_F_NOOUTPUT
        conn.timeout, conn.expires = 3, _ms(now) + 3000
        conn.in_ifindex = ifindex
        l2 = self._config.mode == MODE_L2
        conn.client_mac = bytes(buf[6:12]) if l2 else b""
        conn.local_mac = bytes(buf[0:6]) if l2 else b""
        conn.control, conn.n_control, conn.tkey, conn.last_end = None, 0, None, 0
        # ip_vs_bind_dest: count the connection on its dest, maybe set overload.
        if flags & CONN_F_TEMPLATE:
            dest.persistconns += 1
        else:
            dest.inactconns += 1
            self._conn_in[conn.in_key()] = conn
            if conn.fwd == model.Forward.MASQ:
                self._conn_out[conn.out_key()] = conn
        if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
            dest.flags |= model.DEST_F_OVERLOAD
        return conn

    def _expire_conn(self, conn: _Conn, now: Optional[float] = None) -> None:
        """ip_vs_conn_expire + ip_vs_unbind_dest: unhash, uncount, release the template.  A
        template whose last connection goes and whose own time is up goes too."""
        if self._gone(conn):
            self._dead -= 1
        if conn.flags & CONN_F_TEMPLATE:
            if self._templates.get(conn.tkey) is conn:
                del self._templates[conn.tkey]
            self._orphans.pop(id(conn), None)
        else:
            if self._conn_in.get(conn.in_key()) is conn:
                del self._conn_in[conn.in_key()]
            if self._conn_out.get(conn.out_key()) is conn:
                del self._conn_out[conn.out_key()]
        template = conn.control
        if template is not None:
            template.n_control -= 1
            template.last_end = max(template.last_end, conn.expires)
            conn.control = None
        self._unbind(conn)
        if template is not None and not template.n_control and self._gone(template):
            self._expire_conn(template, now)  # counted when its real server went
            return
        if template is not None and not template.n_control and now is not None \
                and template.dest is not None:
            # while any of its connections lived, every firing of the template's timer re-armed
            # it: it goes at the first firing after the last of them ended
            while template.timeout > 0 and template.expires < template.last_end:
                template.expires += template.timeout * 1000
            if template.expires <= _ms(now):
                self._expire_conn(template, now)
                self._counters["conn_expired"] += 1

    def _unbind(self, conn: _Conn) -> None:
        dest = conn.dest
        if dest is None:
            return
        if conn.flags & CONN_F_TEMPLATE:
            dest.persistconns -= 1
        elif conn.flags & CONN_F_INACTIVE:
            dest.inactconns -= 1
        else:
            dest.activeconns -= 1
        self._clear_overload(dest)
        conn.dest = None

    @staticmethod
    def _clear_overload(dest: model.Dest) -> None:
        """ip_vs_unbind_dest's rule for dropping the overload flag."""
        total = dest.activeconns + dest.inactconns
        if dest.l_threshold:
            if total < dest.l_threshold:
                dest.flags &= ~model.DEST_F_OVERLOAD
        elif dest.u_threshold:
            if total * 4 < dest.u_threshold * 3:
                dest.flags &= ~model.DEST_F_OVERLOAD
        else:
            dest.flags &= ~model.DEST_F_OVERLOAD

    def _set_state(self, conn: _Conn, pkt: _Packet, direction: int) -> None:
        """set_tcp_state / udp_state_transition, then re-arm (ip_vs_conn_put)."""
        if conn.protocol == model.IPPROTO_UDP:
            conn.timeout = self._udp_timeout
            return
        off = direction
        if conn.flags & CONN_F_NOOUTPUT:
            if off == DIR_OUTPUT:
                conn.flags &= ~CONN_F_NOOUTPUT
            else:
                off = DIR_INPUT_ONLY
        event = tcp_event(pkt.tcp_flags)
        new_state = S_CLOSE if event < 0 else TCP_STATES[off + event][conn.state]
        if new_state != conn.state and conn.dest is not None:
            dest = conn.dest
            if not conn.flags & CONN_F_INACTIVE and new_state != S_ESTABLISHED:
                dest.activeconns -= 1
                dest.inactconns += 1
                conn.flags |= CONN_F_INACTIVE
            elif conn.flags & CONN_F_INACTIVE and new_state == S_ESTABLISHED:
                dest.activeconns += 1
                dest.inactconns -= 1
                conn.flags &= ~CONN_F_INACTIVE
        conn.state = new_state
        conn.timeout = self._tcp_timeouts[new_state]

    # ---------------------------------------------------------------- forwarding
    def _has_route(self, dest: model.Dest) -> bool:
        """Local-node dests need none: their packets go to the director's own stack."""
        return dest.fwd == model.Forward.LOCALNODE or dest.addr.packed in self._routes

    def _forward_in(self, pkt: _Packet, conn: _Conn, ifindex: int, now: float, csum_partial: bool):
        buf = pkt.buf
        dest = conn.dest
        route = self._routes.get(conn.daddr)
        if route is None and conn.fwd != model.Forward.LOCALNODE:
            raise _Reject("no_route")
        state = self._services.get(conn.svc)
        ip_len = pkt.ip_end - pkt.l3
        # ip_vs_in: count, move the state, re-arm; then the xmit function routes.
        if state is not None and dest is not None:
            state.svc.stats.inpkts += 1
            state.svc.stats.inbytes += ip_len
            dest.stats.inpkts += 1
            dest.stats.inbytes += ip_len
        self._set_state(conn, pkt, DIR_INPUT)
        conn.expires = _ms(now) + conn.timeout * 1000
        if conn.fwd == model.Forward.LOCALNODE:
            self._counters["local_node"] += 1  # ip_vs_null_xmit: the local stack takes it
            return (PASS, None, 0)
        # __ip_vs_get_out_rt: decrement_ttl first (ICMP time exceeded from the VIP), then the MTU.
        if buf[pkt.hl_off] <= 1:
            self._counters["ttl_exceeded"] += 1
            if pkt.af == model.AF_INET:
                return self._icmp_error(pkt, ifindex, 11, 0, 0, now)
            return self._icmp_error(pkt, ifindex, 3, 0, 0, now)
        self._dec_ttl(pkt)
        mtu = route.mtu
        if conn.fwd == model.Forward.TUNNEL:
            mtu -= 20 if pkt.af == model.AF_INET else 40
        if ip_len > mtu:
            df = pkt.af == model.AF_INET6 or bool(buf[pkt.l3 + 6] & 0x40)
            if not df:
                raise _Reject("needs_fragmentation")
            self._counters["frag_needed"] += 1
            if pkt.af == model.AF_INET:
                return self._icmp_error(pkt, ifindex, 3, 4, mtu, now)
            return self._icmp_error(pkt, ifindex, 2, 0, max(mtu, 1280), now)
        self._counters["fwd_in"] += 1
        if conn.fwd == model.Forward.MASQ:
            self._nat_rewrite(pkt, conn.daddr, conn.dport, dst=True, csum_partial=csum_partial)
        elif conn.fwd == model.Forward.TUNNEL:
            buf = self._encapsulate(pkt, conn, route)
        return (TX, self._l2_out(buf, route), route.ifindex)

    def _reply_out(self, pkt: _Packet, conn: _Conn, now: float, csum_partial: bool):
        buf = pkt.buf
        if buf[pkt.hl_off] <= 1:
            # ip_forward would answer with time exceeded from the director; we drop and count.
            raise _Reject("ttl_exceeded")
        self._set_state(conn, pkt, DIR_OUTPUT)
        conn.expires = _ms(now) + conn.timeout * 1000
        self._dec_ttl(pkt)
        state = self._services.get(conn.svc)
        ip_len = pkt.ip_end - pkt.l3
        if state is not None and conn.dest is not None:
            state.svc.stats.outpkts += 1
            state.svc.stats.outbytes += ip_len
            conn.dest.stats.outpkts += 1
            conn.dest.stats.outbytes += ip_len
        self._nat_rewrite(pkt, conn.vaddr, conn.vport, dst=False, csum_partial=csum_partial)
        self._counters["fwd_out"] += 1
        if self._config.mode == MODE_L2:
            buf[0:6] = conn.client_mac
            buf[6:12] = self._config.local_macs.get(conn.in_ifindex, conn.local_mac)
        return (TX, bytes(buf), conn.in_ifindex)

    def _dec_ttl(self, pkt: _Packet) -> None:
        buf = pkt.buf
        if pkt.af == model.AF_INET:
            old = bytes(buf[pkt.hl_off:pkt.hl_off + 2])
            buf[pkt.hl_off] -= 1
            check = (buf[pkt.l3 + 10] << 8) | buf[pkt.l3 + 11]
            check = csum_replace(check, old, bytes(buf[pkt.hl_off:pkt.hl_off + 2]))
            buf[pkt.l3 + 10:pkt.l3 + 12] = struct.pack("!H", check)
        else:
            buf[pkt.hl_off] -= 1

    def _nat_rewrite(self, pkt: _Packet, new_addr: bytes, new_port: int, dst: bool,
                     csum_partial: bool) -> None:
        """Rewrite daddr:dport (dst=True) or saddr:sport with RFC 1624 checksum updates."""
        buf = pkt.buf
        if pkt.af == model.AF_INET:
            a_off = pkt.l3 + (16 if dst else 12)
            alen = 4
        else:
            a_off = pkt.l3 + (24 if dst else 8)
            alen = 16
        p_off = pkt.l4 + (2 if dst else 0)
        old_addr = bytes(buf[a_off:a_off + alen])
        old_port = bytes(buf[p_off:p_off + 2])
        new_port_b = struct.pack("!H", new_port)
        buf[a_off:a_off + alen] = new_addr
        buf[p_off:p_off + 2] = new_port_b
        if pkt.af == model.AF_INET:
            check = (buf[pkt.l3 + 10] << 8) | buf[pkt.l3 + 11]
            check = csum_replace(check, old_addr, new_addr)
            buf[pkt.l3 + 10:pkt.l3 + 12] = struct.pack("!H", check)
        c_off = pkt.l4 + (16 if pkt.proto == model.IPPROTO_TCP else 6)
        if pkt.l4 + (18 if pkt.proto == model.IPPROTO_TCP else 8) > pkt.ip_end:
            return
        l4check = (buf[c_off] << 8) | buf[c_off + 1]
        if pkt.proto == model.IPPROTO_UDP and l4check == 0 and pkt.af == model.AF_INET:
            return  # no UDP checksum: leave it absent (udp_dnat_handler)
        if csum_partial:
            l4check = csum_replace_partial(l4check, old_addr, new_addr)
        else:
            l4check = csum_replace(l4check, old_addr + old_port, new_addr + new_port_b)
            if pkt.proto == model.IPPROTO_UDP and l4check == 0:
                l4check = 0xFFFF
        buf[c_off:c_off + 2] = struct.pack("!H", l4check)

    def _encapsulate(self, pkt: _Packet, conn: _Conn, route: DestRoute) -> bytearray:
        """ip_vs_tunnel_xmit: an outer IPv4 (proto 4) or IPv6 (next header 41) header."""
        buf = pkt.buf
        inner = bytes(buf[pkt.l3:pkt.ip_end])
        src = route.src_addr.packed if route.src_addr is not None else bytes(len(conn.daddr))
        if pkt.af == model.AF_INET:
            tos = inner[1]
            df = inner[6] & 0x40
            ident = 0 if df else (inner[4] << 8) | inner[5]
            outer = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(inner), ident,
                                          0x4000 if df else 0, inner[8], IPPROTO_IPIP, 0, src,
                                          conn.daddr))
            outer[10:12] = struct.pack("!H", ip4_header_checksum(outer))
        else:
            tclass = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
            outer = bytearray(struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20), len(inner),
                                          IPPROTO_IPV6, inner[7], src, conn.daddr))
        return bytearray(buf[:pkt.l3]) + outer + inner

    def _l2_out(self, buf: bytearray, route: DestRoute) -> bytes:
        if self._config.mode == MODE_L2:
            buf[0:6] = route.dst_mac
            buf[6:12] = route.src_mac
        return bytes(buf)

    # ---------------------------------------------------------------- ICMP
    def _icmp_allowed(self, pkt: _Packet, icmp_type: int, code: int, now: float) -> bool:
        """icmp_global_allow: 1000 errors/s, burst 50, shared by IPv4 and IPv6; fragmentation
        needed and packet too big are never limited (PMTU discovery must work)."""
        if (pkt.af == model.AF_INET and icmp_type == 3 and code == 4) or \
                (pkt.af == model.AF_INET6 and icmp_type == 2):
            return True
        now_ms = int(now * 1000) & 0xFFFFFFFF
        delta = (now_ms - self._icmp_stamp) & 0xFFFFFFFF
        if delta >= ICMP_REFILL_MS:
            self._icmp_credit = min(ICMP_BURST, self._icmp_credit + delta * ICMP_PER_SEC // 1000)
            self._icmp_stamp = now_ms
        if self._icmp_credit <= 0:
            self._counters["icmp_ratelimited"] += 1
            return False
        self._icmp_credit -= 1
        return True

    def _icmp_error(self, pkt: _Packet, ifindex: int, icmp_type: int, code: int, info: int,
                    now: float = 0.0, via: Optional[_Conn] = None):
        """icmp_send / icmp6_send from the VIP back to the client, quoting the packet: REPLY on
        the arrival interface, or (via a connection) TX back the way that connection came in."""
        if not self._icmp_allowed(pkt, icmp_type, code, now):
            return (DROP, None, 0)
        buf = pkt.buf
        original = bytes(buf[pkt.l3:pkt.ip_end])
        if pkt.af == model.AF_INET:
            quote = original[:ICMP4_QUOTE_MAX]
            body = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quote)
            body[2:4] = struct.pack("!H", (~csum_bytes(bytes(body))) & 0xFFFF)
            tos = (original[1] & 0x1E) | 0xC0
            ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), 0, 0,
                                       ICMP_DEFAULT_TTL, IPPROTO_ICMP, 0, pkt.daddr, pkt.saddr))
            ip[10:12] = struct.pack("!H", ip4_header_checksum(ip))
        else:
            quote = original[:ICMP6_QUOTE_MAX]
            body = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quote)
            check = ~csum_bytes(bytes(body), pseudo_sum(pkt.af, pkt.daddr, pkt.saddr,
                                                         IPPROTO_ICMPV6, len(body))) & 0xFFFF
            body[2:4] = struct.pack("!H", check)
            ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6,
                                       ICMP_DEFAULT_TTL, pkt.daddr, pkt.saddr))
        out = bytearray()
        if via is not None:
            if self._config.mode == MODE_L2:
                out += (via.client_mac + self._config.local_macs.get(via.in_ifindex, via.local_mac)
                        + struct.pack("!H", ETH_P_IP if pkt.af == model.AF_INET else ETH_P_IPV6))
            return (TX, bytes(out + ip + body), via.in_ifindex)
        if self._config.mode == MODE_L2:
            out += buf[6:12] + self._config.local_macs.get(ifindex, bytes(buf[0:6])) + buf[12:pkt.l3]
        out += ip + body
        return (REPLY, bytes(out), ifindex)

    def _icmp_tunnel(self, pkt: _Packet, tunnel: _Packet, now: float):
        """An ICMP error about one of our IP-in-IP packets (from the path to a real server): tell
        the client, as ip_vs_in_icmp does -- with the tunnel's overhead taken off a reported MTU."""
        buf = pkt.buf
        try:
            orig = _parse_ip(buf, tunnel.l4, model.AF_INET, check_csum=False, quoted=True)
        except _Reject:
            orig = None
        if orig is None or orig.fragment or orig.proto not in (model.IPPROTO_TCP, model.IPPROTO_UDP) \
                or orig.l4 + 8 > pkt.ip_end:
            self._counters["icmp_bad"] += 1
            return (PASS, None, 0)
        sport = (buf[orig.l4] << 8) | buf[orig.l4 + 1]
        dport = (buf[orig.l4 + 2] << 8) | buf[orig.l4 + 3]
        # "For IPIP this is error for request, not for reply": the quote is client -> VIP.
        conn = self._conn_in.get((orig.proto, model.AF_INET, orig.saddr, sport, orig.daddr, dport))
        if conn is None or conn.expires <= _ms(now) or conn.fwd != model.Forward.TUNNEL \
                or pkt.daddr != tunnel.saddr or self._gone(conn):
            self._counters["icmp_not_conn"] += 1
            return (PASS, None, 0)
        icmp_type, code = buf[pkt.l4], buf[pkt.l4 + 1]
        info = struct.unpack("!I", bytes(buf[pkt.l4 + 4:pkt.l4 + 8]))[0]
        if icmp_type == 3 and code == 4:
            if not buf[orig.l3 + 6] & 0x40:
                self._counters["icmp_bad"] += 1  # the client does not do PMTU discovery
                return (DROP, None, 0)
            mtu = info & 0xFFFF
            route = self._routes.get(conn.daddr)
            if route is not None and (mtu < 68 or route.mtu < mtu):
                mtu = route.mtu  # the route's (lowered) PMTU is preferred
            if mtu > 68 + 20:
                mtu -= 20
            info = mtu
        self._counters["icmp_tunnel"] += 1
        return self._icmp_error(orig, conn.in_ifindex, icmp_type, code, info, now, via=conn)

    def _icmp(self, pkt: _Packet, ifindex: int, now: float):
        """ICMP errors quoting a connection (ip_vs_in_icmp / ip_vs_out_icmp)."""
        buf = pkt.buf
        if pkt.l4 + 8 > pkt.ip_end:
            self._counters["pass_not_service"] += 1
            return (PASS, None, 0)
        icmp_type = buf[pkt.l4]
        if pkt.af == model.AF_INET:
            is_error = icmp_type in (3, 11, 12)
        else:
            is_error = icmp_type in (1, 2, 3, 4)
        if not is_error:
            self._counters["pass_not_service"] += 1
            return (PASS, None, 0)
        try:
            inner = _parse_ip(buf, pkt.l4 + 8, pkt.af, check_csum=False, quoted=True)
        except _Reject:
            inner = None
        if inner is not None and pkt.af == model.AF_INET and inner.proto == IPPROTO_IPIP \
                and not inner.fragment:
            return self._icmp_tunnel(pkt, inner, now)
        if inner is None or inner.fragment or inner.proto not in (model.IPPROTO_TCP, model.IPPROTO_UDP):
            self._counters["icmp_bad"] += 1
            return (PASS, None, 0)
        # A quote is usually cut short: ports need only the first 8 bytes of L4.
        if inner.l4 + 8 > pkt.ip_end:
            self._counters["icmp_bad"] += 1
            return (PASS, None, 0)
        inner.sport = (buf[inner.l4] << 8) | buf[inner.l4 + 1]
        inner.dport = (buf[inner.l4 + 2] << 8) | buf[inner.l4 + 3]
        # in: the quote is our reply VIP->client, so the connection is (client, VIP) reversed.
        conn = self._conn_in.get((inner.proto, inner.af, inner.daddr, inner.dport,
                                  inner.saddr, inner.sport))
        if conn is not None and conn.expires > _ms(now) and pkt.daddr == conn.vaddr \
                and not self._gone(conn):
            return self._icmp_in(pkt, inner, conn, ifindex)
        # out: the quote is client->real server, the error comes from the real server side (NAT).
        conn = self._conn_out.get((inner.proto, inner.af, inner.daddr, inner.dport,
                                   inner.saddr, inner.sport))
        if conn is not None and conn.expires > _ms(now) and not self._gone(conn):
            return self._icmp_out(pkt, inner, conn)
        self._counters["icmp_not_conn"] += 1
        return (PASS, None, 0)

    def _icmp_fix_checksum(self, pkt: _Packet) -> None:
        buf = pkt.buf
        buf[pkt.l4 + 2:pkt.l4 + 4] = b"\0\0"
        data = bytes(buf[pkt.l4:pkt.ip_end])
        if pkt.af == model.AF_INET:
            check = ~csum_bytes(data) & 0xFFFF
        else:
            check = ~csum_bytes(data, pseudo_sum(pkt.af, bytes(buf[pkt.l3 + 8:pkt.l3 + 24]),
                                                 bytes(buf[pkt.l3 + 24:pkt.l3 + 40]),
                                                 IPPROTO_ICMPV6, pkt.ip_end - pkt.l4)) & 0xFFFF
        buf[pkt.l4 + 2:pkt.l4 + 4] = struct.pack("!H", check)

    def _set_addr(self, pkt: _Packet, which: str, addr: bytes) -> None:
        """Overwrite saddr/daddr of an IP header; IPv4 header checksum recomputed (ip_send_check)."""
        buf = pkt.buf
        if pkt.af == model.AF_INET:
            off = pkt.l3 + (12 if which == "src" else 16)
            buf[off:off + 4] = addr
            ihl = (buf[pkt.l3] & 0x0F) * 4
            header = bytearray(buf[pkt.l3:pkt.l3 + ihl])
            buf[pkt.l3 + 10:pkt.l3 + 12] = struct.pack("!H", ip4_header_checksum(header))
        else:
            off = pkt.l3 + (8 if which == "src" else 24)
            buf[off:off + 16] = addr

    def _icmp_in(self, pkt: _Packet, inner: _Packet, conn: _Conn, ifindex: int):
        """An error about our reply, from the client side: hand it to the real server."""
        buf = pkt.buf
        if conn.fwd == model.Forward.LOCALNODE:
            self._counters["local_node"] += 1
            return (PASS, None, 0)
        route = self._routes.get(conn.daddr)
        if route is None:
            raise _Reject("no_route")
        if buf[pkt.hl_off] <= 1:
            raise _Reject("ttl_exceeded")
        self._counters["icmp_error_in"] += 1
        if conn.fwd == model.Forward.MASQ:
            # ip_vs_nat_icmp(inout=0): outer daddr and quoted saddr/sport become the real server.
            self._set_addr(pkt, "dst", conn.daddr)
            self._set_addr(inner, "src", conn.daddr)
            buf[inner.l4:inner.l4 + 2] = struct.pack("!H", conn.dport)
            self._dec_ttl(pkt)
            self._icmp_fix_checksum(pkt)
            return (TX, self._l2_out(buf, route), route.ifindex)
        self._dec_ttl(pkt)
        if conn.fwd == model.Forward.TUNNEL:
            buf = self._encapsulate(pkt, conn, route)
        return (TX, self._l2_out(buf, route), route.ifindex)

    def _icmp_out(self, pkt: _Packet, inner: _Packet, conn: _Conn):
        """An error about a client->real server packet, from the real server side (NAT only)."""
        buf = pkt.buf
        if buf[pkt.hl_off] <= 1:
            raise _Reject("ttl_exceeded")
        self._counters["icmp_error_out"] += 1
        # ip_vs_nat_icmp(inout=1): outer saddr and quoted daddr/dport become the VIP.
        self._set_addr(pkt, "src", conn.vaddr)
        self._set_addr(inner, "dst", conn.vaddr)
        buf[inner.l4 + 2:inner.l4 + 4] = struct.pack("!H", conn.vport)
        self._dec_ttl(pkt)
        self._icmp_fix_checksum(pkt)
        if self._config.mode == MODE_L2:
            buf[0:6] = conn.client_mac
            buf[6:12] = self._config.local_macs.get(conn.in_ifindex, conn.local_mac)
        return (TX, bytes(buf), conn.in_ifindex)

    # ---------------------------------------------------------------- ARP / ND
    def _arp(self, buf: bytearray, l3: int, ifindex: int):
        if len(buf) < l3 + 28:
            raise _Reject("l4_truncated")
        htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", buf[l3:l3 + 8])
        if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, 1):
            self._counters["pass_not_ip"] += 1
            return (PASS, None, 0)
        sha, spa = bytes(buf[l3 + 8:l3 + 14]), bytes(buf[l3 + 14:l3 + 18])
        tpa = bytes(buf[l3 + 24:l3 + 28])
        mac = self._config.local_macs.get(ifindex)
        if mac is None or (ifindex, tpa) not in self._proxy:
            self._counters["pass_not_ip"] += 1
            return (PASS, None, 0)
        self._counters["arp_reply"] += 1
        out = bytearray(bytes(buf[6:12]) + mac + bytes(buf[12:l3]))
        out += struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + mac + tpa + sha + spa
        return (REPLY, bytes(out), ifindex)

    def _maybe_nd(self, pkt: _Packet, ifindex: int):
        """Answer a neighbour solicitation for a proxied VIP with a solicited advertisement."""
        buf = pkt.buf
        if pkt.l4 + 24 > pkt.ip_end or buf[pkt.l4] != 135 or buf[pkt.l4 + 1] != 0:
            return None
        target = bytes(buf[pkt.l4 + 8:pkt.l4 + 24])
        mac = self._config.local_macs.get(ifindex)
        if mac is None or (ifindex, target) not in self._proxy:
            return None
        self._counters["nd_advert"] += 1
        solicited = pkt.saddr != bytes(16)
        dst = pkt.saddr if solicited else ipaddress.IPv6Address("ff02::1").packed
        flags = 0x60000000 if solicited else 0x20000000  # S|O, or O alone for DAD
        body = bytearray(struct.pack("!BBHI", 136, 0, 0, flags) + target + b"\x02\x01" + mac)
        check = ~csum_bytes(bytes(body), pseudo_sum(model.AF_INET6, target, dst, IPPROTO_ICMPV6,
                                                    len(body))) & 0xFFFF
        body[2:4] = struct.pack("!H", check)
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(body), IPPROTO_ICMPV6, 255, target, dst)
        eth_dst = bytes(buf[6:12]) if solicited else b"\x33\x33\x00\x00\x00\x01"
        out = eth_dst + mac + bytes(buf[12:pkt.l3]) + ip + bytes(body)
        return (REPLY, out, ifindex)

    # ---------------------------------------------------------------- time, listings, stats
    def expire(self, now: float, budget: Optional[int] = None) -> int:
        """Expire connections whose time is up; run the rate estimator; return how many.
        By default at most EXPIRE_MAX_FREED go per call (the rest on later calls, as in the
        compiled core); with a `budget` (which bounds the compiled core's slot sweep) this
        reference sweeps everything."""
        gone = self._sweep(now, EXPIRE_MAX_FREED if budget is None else None)
        self._estimate(now)
        return gone

    def _sweep(self, now: float, max_freed: Optional[int] = None) -> int:
        before = self._counters["conn_expired"]
        now_ms = _ms(now)
        for conn in list(self._templates.values()) + list(self._conn_in.values()):
            if max_freed is not None and self._counters["conn_expired"] - before >= max_freed:
                break
            if conn.dest is None:
                continue  # already gone (with its last connection)
            if self._gone(conn):
                self._reap(conn, now)  # its real server was deleted: freed in passing
                continue
            if conn.expires > now_ms:
                continue  # not due
            if conn.flags & CONN_F_TEMPLATE and conn.n_control:
                # expire_later: while it controls connections the kernel's timer keeps re-arming
                # it; the last connection to go settles its real expiry (_expire_conn)
                continue
            else:
                self._expire_conn(conn, now)
                self._counters["conn_expired"] += 1
        return self._counters["conn_expired"] - before

    def _estimate(self, now: float) -> None:
        if self._next_est is None:
            self._next_est = now + EST_INTERVAL
            return
        ticks = 0
        while now >= self._next_est and ticks < 32:
            self._next_est += EST_INTERVAL
            ticks += 1
            for state in self._services.values():
                state.est.tick(state.svc.stats)
                for dest in state.svc.dests:
                    est = state.dest_est.setdefault((dest.addr, dest.port), _Estimator())
                    est.tick(dest.stats)
        if now >= self._next_est:
            self._next_est = now + EST_INTERVAL

    # --- connection listings (the compiled core's connections_chunk: same rows, same order) ---
    def connections(self, now: Optional[float] = None) -> list[dict]:
        """Rows as /proc/net/ip_vs_conn has them (Backend.get_connections): templates, then
        connections."""
        out: list[dict] = []
        cursor = 0
        while True:
            rows, cursor = self.connections_chunk(cursor, LIST_CHUNK, now)
            out.extend(rows)
            if cursor == 0:
                return out

    def connections_chunk(self, cursor: int = 0, limit: int = LIST_CHUNK,
                          now: Optional[float] = None) -> tuple[list[dict], int]:
        """At most ``limit`` rows of ``connections()`` from ``cursor`` on: (rows, next cursor);
        0 starts, a returned 0 ends.  Here the cursor is a position in templates + connections
        (the compiled core's is a table index; both are opaque to callers)."""
        if cursor < 0:
            raise ValueError(f"bad connection cursor {cursor!r}")
        if limit <= 0:
            raise ValueError("limit must be positive")
        limit = min(limit, LIST_CHUNK_MAX)
        conns = [conn for conn in list(self._templates.values()) + list(self._conn_in.values())
                 if not self._gone(conn)]   # a deleted real server's: not listed (see _gone)
        rows = [self._connection_row(conn, now) for conn in conns[cursor:cursor + limit]]
        following = cursor + limit
        return rows, (following if following < len(conns) else 0)

    @staticmethod
    def _connection_row(conn: "_Conn", now: Optional[float]) -> dict:
        if conn.flags & CONN_F_TEMPLATE:
            protocol = model.PROTOCOL_NAMES.get(conn.protocol, "IP")
            state = "NONE"
        else:
            protocol = model.PROTOCOL_NAMES[conn.protocol]
            state = "UDP" if conn.protocol == model.IPPROTO_UDP else TCP_STATE_NAMES[conn.state]
        if now is None:
            left = conn.timeout
        else:
            left_ms = conn.expires - _ms(now)
            if left_ms <= 0 and conn.flags & CONN_F_TEMPLATE and conn.n_control and conn.timeout:
                # its timer would have re-armed it every timeout while it controlled conns
                step = conn.timeout * 1000
                left_ms = step - (-left_ms) % step
            left = max(0, left_ms) // 1000
        return dict(protocol=protocol, caddr=_addr(conn.af, conn.caddr), cport=conn.cport,
                    vaddr=_addr(conn.af, conn.vaddr), vport=conn.vport,
                    daddr=_addr(conn.af, conn.daddr), dport=conn.dport, state=state,
                    expires=int(left), pe_name="", pe_data="")

    def services(self) -> list[model.Service]:
        """Copies of the published services with live counts, counters and rates."""
        out = []
        for state in self._services.values():
            svc = copy.deepcopy(state.svc)
            state.est.fill(svc.stats)
            for dest in svc.dests:
                est = state.dest_est.get((dest.addr, dest.port))
                if est is not None:
                    est.fill(dest.stats)
            out.append(svc)
        return out

    def zero(self, key: Optional[model.ServiceKey] = None) -> None:
        """ipvsadm -Z: counters and rate estimators back to zero."""
        for state in self._services.values():
            if key is not None and state.svc.key != key:
                continue
            state.svc.stats = model.Stats()
            state.est = _Estimator()
            state.dest_est = {}
            for dest in state.svc.dests:
                dest.stats = model.Stats()

    def counters(self) -> dict:
        return dict(self._counters)

    @staticmethod
    def tcp_state_table() -> tuple:
        return TCP_STATES

    def process_batch(self, frames, now: float) -> list:
        """[(frame, ifindex), ...] -> [(verdict, out_frame, out_ifindex), ...], as the C entry."""
        return [self.process(frame, ifindex, now) for frame, ifindex in frames]

    def conn_count(self) -> int:
        return len(self._conn_in) + len(self._templates) + len(self._orphans) - self._dead
