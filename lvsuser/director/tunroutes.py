"""Policy routing for `--io tun`: steer VIP traffic and NAT replies into the director's TUN device.

Theory of operation
-------------------
With ``--io tun`` the kernel, not an AF_PACKET ring, delivers packets to us: a routing table of
our own (``table``) holds one route, ``default dev <tun>``, and policy rules select what goes there:

  * ``to VIP ipproto P dport PORT``  -- new and existing client traffic of each virtual service;
  * ``from RIP ipproto P sport RPORT`` -- the answers of masquerading real servers (NAT replies).

Everything the core writes back into the device re-enters routing as if received on it: the
rewritten packets no longer match the rules (their destination is a real server, or their source
is the VIP), so the main table forwards them.  That needs ``ip_forward`` and, because rewritten
replies and IPIP packets carry one of the director's own addresses as source, ``accept_local`` on
the device; ``rp_filter`` is switched off on it.  Previous values are restored on close.

A NAT-reply rule matches the real server's address and port only, so it would also steer the
answers to the director's *own* connections to that port (a health check, an operator's curl)
into the device, where the core, finding no connection, drops them.  Those are addressed to one
of the director's addresses, and the ``local`` table knows which: between the VIP rules and the
NAT-reply rules sits a plain ``lookup local`` per family.  A lookup that finds no route falls
through to the next rule, so a reply to a client goes on into the device, while one to the
director is delivered.  (Normally the priority-0 ``local`` rule does this already; it matters
when that rule was moved, below.)

A VIP that is not one of the director's addresses must still be answered for on the wire.  For
IPv6 a proxy neighbour entry per served interface does it (``ip neigh add proxy VIP dev IF`` with
``proxy_ndp``).  IPv4 proxy ARP refuses to answer for an address routed back out of the asking
interface (the usual case: the VIP sits in the clients' subnet), so an IPv4 VIP is put on the TUN
device itself, /32: the kernel then answers ARP for it like for any local address, and the rules
below still steer its service traffic into the device.  Both are removed on close.

The guide puts the VIP on the director's interface.  The ``local`` table is consulted at rule
priority 0, before any rule we can add, and would deliver VIP traffic to the director's own
stack.  When a VIP is local we therefore re-add the ``local`` lookup after our rules and remove
the priority-0 one (``ip rule`` users know this move); close() puts it back first.
"""
from __future__ import annotations

import errno
import logging
import socket

from lvsuser import model

log = logging.getLogger(__name__)

RULE_PRIORITY = 1000  # our rules: 1000 + n
LOCAL_MOVED_PRIORITY = 2000  # where the `local` lookup goes while a VIP is local
RT_TABLE_LOCAL = 255
FR_ACT_TO_TBL = 1
NTF_PROXY = 0x08


class TunRoutes:
    def __init__(self, ipr, tun_ifindex: int, tun_name: str, table: int):
        self.ipr = ipr
        self.tun_ifindex = tun_ifindex
        self.tun_name = tun_name
        self.table = table
        self._rules: list[dict] = []  # what we added, to delete exactly that
        self._local_moved = {}  # family -> True
        self._sysctl_saved: dict[str, str] = {}
        self._proxies: set[tuple[int, str]] = set()  # (ifindex, VIP) proxy neighbour entries
        self._tun_addrs: set[str] = set()  # IPv4 VIPs we put on the TUN device

    # --- sysctls of the director's own namespace ------------------------------------------
    def _sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key
        try:
            with open(path) as f:
                old = f.read().strip()
            if old != value:
                self._sysctl_saved.setdefault(path, old)
                with open(path, "w") as f:
                    f.write(value)
        except OSError as exc:
            log.warning("cannot set %s=%s: %s", key, value, exc)

    def setup(self) -> None:
        self._sysctl("net/ipv4/ip_forward", "1")
        self._sysctl("net/ipv6/conf/all/forwarding", "1")
        self._sysctl(f"net/ipv4/conf/{self.tun_name}/rp_filter", "0")
        self._sysctl(f"net/ipv4/conf/{self.tun_name}/accept_local", "1")
        self._default_routes()

    def _default_routes(self) -> None:
        for family in (socket.AF_INET, socket.AF_INET6):
            self.ipr.route("replace", family=family, table=self.table, oif=self.tun_ifindex,
                           dst="default" if family == socket.AF_INET else "::/0")

    # --- rules ----------------------------------------------------------------------------
    def _wanted(self, services: list[model.Service], mark_rules: list[model.MarkRule]) -> list[dict]:
        wanted: list[dict] = []
        seen = set()

        def add(**rule):
            key = tuple(sorted(rule.items()))
            if key not in seen:
                seen.add(key)
                wanted.append(rule)

        replies: list[dict] = []  # NAT-reply rules, placed after the VIP rules

        def add_reply(**rule):
            key = tuple(sorted(rule.items()))
            if key not in seen:
                seen.add(key)
                replies.append(rule)

        marks: dict[int, list[model.MarkRule]] = {}
        for mrule in mark_rules:
            marks.setdefault(mrule.mark, []).append(mrule)
        for svc in services:
            if svc.fwmark:
                for mrule in marks.get(svc.fwmark, []):
                    rule = dict(family=socket.AF_INET6 if mrule.dst_net.version == 6 else socket.AF_INET,
                                dst=str(mrule.dst_net.network_address), dst_len=mrule.dst_net.prefixlen)
                    if mrule.protocol:
                        rule["ip_proto"] = mrule.protocol
                        if (mrule.dport_lo, mrule.dport_hi) != (0, 65535):
                            rule["dport_range"] = f"{mrule.dport_lo}:{mrule.dport_hi}"
                    add(**rule)
            else:
                family = socket.AF_INET6 if svc.addr.version == 6 else socket.AF_INET
                rule = dict(family=family, dst=str(svc.addr), dst_len=svc.addr.max_prefixlen,
                            ip_proto=svc.protocol)
                if svc.port:
                    rule["dport_range"] = f"{svc.port}:{svc.port}"
                add(**rule)
            for dest in svc.dests:
                if dest.fwd != model.Forward.MASQ:
                    continue
                family = socket.AF_INET6 if dest.addr.version == 6 else socket.AF_INET
                protos = [svc.protocol] if svc.protocol else [model.IPPROTO_TCP, model.IPPROTO_UDP]
                for proto in protos:
                    rule = dict(family=family, src=str(dest.addr), src_len=dest.addr.max_prefixlen,
                                ip_proto=proto)
                    if dest.port:
                        rule["sport_range"] = f"{dest.port}:{dest.port}"
                    add_reply(**rule)
        # replies addressed to the director itself are delivered before the NAT-reply rules
        for family in sorted({rule["family"] for rule in replies}):
            wanted.append(dict(family=family, table=RT_TABLE_LOCAL))
        return wanted + replies

    def apply(self, services, mark_rules, local_vip_families: set[int]) -> None:
        wanted = self._wanted(services, mark_rules)
        if wanted != [{k: v for k, v in r.items() if k != "priority"} for r in self._rules]:
            self._delete_rules()
            for n, rule in enumerate(wanted):
                full = dict(dict(table=self.table), **rule, priority=RULE_PRIORITY + n,
                            action=FR_ACT_TO_TBL)
                self.ipr.rule("add", **full)
                self._rules.append(dict(rule, priority=RULE_PRIORITY + n))
        for family in local_vip_families:
            self._move_local(family)

    def apply_proxies(self, vips: list[str], interfaces: dict[int, str]) -> None:
        """Make the kernel answer ARP/ND for non-local VIPs; interfaces: ifindex -> name."""
        wanted_v4 = {vip for vip in vips if ":" not in vip}
        wanted_v6 = {(idx, vip) for vip in vips if ":" in vip for idx in interfaces}
        removed = self._tun_addrs - wanted_v4
        for vip in removed:
            self._tun_addr("del", vip)
        if removed:
            # the kernel drops every IPv4 route through a device that loses its last IPv4
            # address (fib_disable_ip), our table's default route too: put it back
            self._default_routes()
        for vip in wanted_v4 - self._tun_addrs:
            self._tun_addr("add", vip)
        self._tun_addrs = wanted_v4
        for idx, vip in self._proxies - wanted_v6:
            self._proxy("del", idx, vip)
        for idx, vip in wanted_v6 - self._proxies:
            self._sysctl(f"net/ipv6/conf/{interfaces[idx]}/proxy_ndp", "1")
            self._proxy("add", idx, vip)
        self._proxies = wanted_v6

    def _tun_addr(self, action: str, vip: str) -> None:
        try:
            self.ipr.addr(action, index=self.tun_ifindex, address=vip, prefixlen=32)
        except Exception as exc:
            log.warning("could not %s %s/32 on %s: %s", action, vip, self.tun_name, exc)

    def _proxy(self, action: str, ifindex: int, vip: str) -> None:
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        try:
            self.ipr.neigh(action, family=family, dst=vip, ifindex=ifindex, flags=NTF_PROXY)
        except Exception as exc:
            log.warning("could not %s proxy neighbour %s on ifindex %d: %s", action, vip, ifindex, exc)

    def _delete_rules(self) -> None:
        for rule in self._rules:
            try:
                self.ipr.rule("del", **dict(dict(table=self.table), **rule), action=FR_ACT_TO_TBL)
            except Exception as exc:
                log.warning("could not delete rule %s: %s", rule, exc)
        self._rules = []

    def _move_local(self, family: int) -> None:
        if self._local_moved.get(family):
            return
        try:
            self.ipr.rule("add", family=family, priority=LOCAL_MOVED_PRIORITY, table=RT_TABLE_LOCAL,
                          action=FR_ACT_TO_TBL)
        except Exception as exc:
            # EEXIST: a director killed with SIGKILL left it moved; adopt that state
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
        self._local_moved[family] = True
        try:
            self.ipr.rule("del", family=family, priority=0, table=RT_TABLE_LOCAL, action=FR_ACT_TO_TBL)
        except Exception as exc:
            log.warning("could not move the local table's rule: %s", exc)

    def close(self) -> None:
        for family in list(self._local_moved):
            try:
                try:
                    self.ipr.rule("add", family=family, priority=0, table=RT_TABLE_LOCAL,
                                  action=FR_ACT_TO_TBL)
                except Exception as exc:
                    if getattr(exc, "code", None) != errno.EEXIST:
                        raise
                self.ipr.rule("del", family=family, priority=LOCAL_MOVED_PRIORITY,
                              table=RT_TABLE_LOCAL, action=FR_ACT_TO_TBL)
            except Exception as exc:
                log.warning("could not restore the local table's rule: %s", exc)
        self._local_moved.clear()
        self._delete_rules()
        for idx, vip in list(self._proxies):
            self._proxy("del", idx, vip)
        self._proxies.clear()
        for vip in list(self._tun_addrs):
            self._tun_addr("del", vip)
        self._tun_addrs.clear()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                self.ipr.flush_routes(table=self.table, family=family)
            except Exception:
                pass
        for path, old in self._sysctl_saved.items():
            try:
                with open(path, "w") as f:
                    f.write(old)
            except OSError:
                pass
        self._sysctl_saved.clear()
