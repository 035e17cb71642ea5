"""The nftables guard: keeps the director's own kernel out of VIP traffic.

Theory of operation
-------------------
An AF_PACKET socket receives a *copy* of every frame; the original still climbs the director's
stack.  Left alone, the kernel would answer a VIP it does not own with ICMP, a VIP it does own
(the guide puts it on ``eth0:0``) with a RST, and with ``ip_forward=1`` forward the real servers'
NAT replies un-rewritten.  Packet taps run in ``__netif_receive_skb_core`` before the ingress
hooks, so a ``netdev`` table whose ingress chains drop exactly that traffic leaves the ring's copy
untouched and keeps the kernel out.

We drop, per served interface:
  * frames to a virtual service (VIP + protocol + port, or the packets a fwmark rule selects);
  * ICMP errors addressed to a VIP (the core relates them to a connection);
  * NAT replies: frames from a masquerading real server's address and port, and ICMP errors it
    sends (the core rewrites and forwards them) -- but only those addressed to someone else.

A NAT reply goes to a client, never to one of the director's own addresses; a frame from RIP:port
addressed to the director is the answer to the director's *own* connection (a health check, an
operator's ``curl http://RIP/``), which kernel IPVS leaves alone too.  So the NAT-reply rules end
in ``fib daddr type != local``: the kernel's own answer to "is this one of my addresses", looked
up per packet in the namespace's local table, so it is never stale (no set of addresses to keep
current, no window after an address is added).  The netdev family has ``fib`` since Linux 4.16.
The VIP rules come first and carry no such exception: a VIP the director holds locally (the
guide's ``eth0:0``) is local, and its service traffic must stay hidden all the same.
Everything else (ARP, pings to the director, its own sessions) passes.

The table is named after the director's state tag (``lvsuser_<tag>``, lvsuser.statedir: derived
from its control socket), so the same director started again -- after SIGTERM with its state
kept, SIGKILL, an upgrade -- adopts its own table, and the kernel stays out of VIP traffic
across the gap.  ``sweep_stale()`` removes tables nobody will come back for: those of directors
whose state is gone, and the older per-process ``lvsuser_<pid>`` tables of dead processes.  The
ruleset is replaced in one nft transaction (create, delete, create) so there is no window
without a guard, also when adopting.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess
import threading
from typing import Iterable, Optional

from lvsuser import model, statedir

log = logging.getLogger(__name__)

TABLE_PREFIX = "lvsuser_"
_PROTO_NAME = {model.IPPROTO_TCP: "tcp", model.IPPROTO_UDP: "udp", model.IPPROTO_SCTP: "sctp"}
_ICMP4_ERRORS = "icmp type { destination-unreachable, source-quench, time-exceeded, parameter-problem }"
_ICMP6_ERRORS = "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }"
# NAT-reply rules spare frames addressed to the director itself (see the theory above)
_NOT_TO_DIRECTOR = "fib daddr type != local"
_IFNAME_OK = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_TABLE_OK = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class GuardError(RuntimeError):
    pass


def _run_nft(script: str) -> None:
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True,
                              timeout=10)
    except FileNotFoundError as exc:
        raise GuardError("the nft command (package nftables) is not installed") from exc
    if proc.returncode != 0:
        raise GuardError(f"nft refused the guard ruleset: {proc.stderr.strip()}")


def _family_words(addr) -> tuple[str, str]:
    return ("ip6", _ICMP6_ERRORS) if addr.version == 6 else ("ip", _ICMP4_ERRORS)


def service_rules(services: Iterable[model.Service], mark_rules: Iterable[model.MarkRule]) -> list[str]:
    """The drop rules for a set of services; pure, so tests can read them."""
    rules: list[str] = []
    seen: set[str] = set()
    marks = {}
    for rule in mark_rules:
        marks.setdefault(rule.mark, []).append(rule)

    def add(rule: str) -> None:
        if rule not in seen:
            seen.add(rule)
            rules.append(rule)

    vips = set()
    for svc in services:
        if svc.fwmark:
            for mrule in marks.get(svc.fwmark, []):
                fam = "ip6" if mrule.dst_net.version == 6 else "ip"
                if (fam == "ip6") != (svc.af == model.AF_INET6):
                    continue
                parts = [f"{fam} daddr {mrule.dst_net}"]
                if mrule.src_net is not None:
                    parts.append(f"{fam} saddr {mrule.src_net}")
                proto = _PROTO_NAME.get(mrule.protocol)
                if proto:
                    if (mrule.dport_lo, mrule.dport_hi) != (0, 65535):
                        parts.append(f"{proto} dport {mrule.dport_lo}-{mrule.dport_hi}")
                    else:
                        parts.append(f"meta l4proto {proto}")
                add(" ".join(parts) + " drop")
        else:
            fam, _ = _family_words(svc.addr)
            proto = _PROTO_NAME.get(svc.protocol)
            if proto is None:
                continue
            vips.add(svc.addr)
            if svc.port:
                add(f"{fam} daddr {svc.addr} {proto} dport {svc.port} drop")
            else:
                add(f"{fam} daddr {svc.addr} meta l4proto {proto} drop")
        for dest in svc.dests:
            if dest.fwd != model.Forward.MASQ:
                continue
            fam, errors = _family_words(dest.addr)
            protos = [_PROTO_NAME[svc.protocol]] if svc.protocol in _PROTO_NAME else ["tcp", "udp"]
            for proto in protos:
                if dest.port:
                    add(f"{fam} saddr {dest.addr} {proto} sport {dest.port} {_NOT_TO_DIRECTOR} drop")
                else:
                    add(f"{fam} saddr {dest.addr} meta l4proto {proto} {_NOT_TO_DIRECTOR} drop")
            add(f"{fam} saddr {dest.addr} {errors} {_NOT_TO_DIRECTOR} drop")
    for vip in sorted(vips, key=lambda a: (a.version, a)):
        fam, errors = _family_words(vip)
        add(f"{fam} daddr {vip} {errors} drop")
    return rules


class Guard:
    """One netdev table for this director; ``apply`` replaces its rules atomically.

    It also remembers what it installed (the script, and nft's own listing of the result), so
    ``verify()`` can tell whether someone removed or changed the table since, and
    ``restore()`` can put it back.  A lock orders ``apply``, ``verify``/``restore`` and
    ``remove``, which run from different threads (control, netlink monitor, guard watch)."""

    def __init__(self, table: Optional[str] = None):
        self.table = table or f"{TABLE_PREFIX}{os.getpid()}"
        if not _TABLE_OK.match(self.table):
            raise GuardError(f"{self.table!r} cannot name an nft table")
        self.installed = False
        self._lock = threading.RLock()
        self._script = ""
        self._listing: Optional[str] = None
        self.restores = 0  # times the table was found removed or altered and put back

    @classmethod
    def for_director(cls, control_path: Optional[str]) -> "Guard":
        """The guard of the director behind `control_path`, named after its state tag so that
        the same director started again adopts its table; per process without a socket."""
        if control_path is None:
            return cls()
        return cls(TABLE_PREFIX + statedir.state_tag(control_path))

    def script(self, ifnames: Iterable[str], rules: list[str]) -> str:
        lines = [f"table netdev {self.table} {{}}", f"delete table netdev {self.table}",
                 f"table netdev {self.table} {{"]
        for n, ifname in enumerate(sorted(set(ifnames))):
            if not _IFNAME_OK.match(ifname):
                raise GuardError(f"interface name {ifname!r} cannot be used in an nft rule")
            lines.append(f"  chain in{n} {{")
            lines.append(f'    type filter hook ingress device "{ifname}" priority -500; policy accept;')
            lines.extend(f"    {rule}" for rule in rules)
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def apply(self, ifnames: Iterable[str], rules: list[str]) -> None:
        script = self.script(ifnames, rules)
        with self._lock:
            if self.installed and script == self._script:
                return  # a weight or scheduler edit: nothing the guard drops has changed
            _run_nft(script)
            self.installed = True
            self._script = script
            self._listing = self.listing()

    def listing(self) -> Optional[str]:
        """nft's listing of the table as it is now; None when there is no such table."""
        try:
            proc = subprocess.run(["nft", "list", "table", "netdev", self.table], text=True,
                                  capture_output=True, timeout=10)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def verify(self) -> Optional[str]:
        """None if the table is as installed (or not installed by us), else what is wrong."""
        with self._lock:
            if not self.installed:
                return None
            now = self.listing()
            if now == self._listing:
                return None
            return "removed" if now is None else "altered"

    def restore(self) -> Optional[str]:
        """Put the table back if it was removed or altered; returns what was found, or None.

        Logs one WARNING line when it restored the table.  If nft refuses the saved script (an
        interface it names has gone since), the backend's next republish installs a new one."""
        with self._lock:
            found = self.verify()
            if found is None:
                return None
            try:
                _run_nft(self._script)
            except GuardError as exc:
                log.warning("nft table netdev %s was %s and could not be restored yet: %s",
                            self.table, found, exc)
                return found
            self._listing = self.listing()
            self.restores += 1
        log.warning("nft table netdev %s was %s by another program (`nft flush ruleset`, a "
                    "firewall reload?); restored it", self.table, found)
        return found

    def remove(self) -> None:
        with self._lock:
            if not self.installed:
                return
            try:
                _run_nft(f"table netdev {self.table} {{}}\ndelete table netdev {self.table}\n")
            except GuardError as exc:
                log.warning("could not remove nft table %s: %s", self.table, exc)
            self.installed = False
            self._script, self._listing = "", None

    def forget(self) -> None:
        """Stop owning the table but leave it installed (a director stopping with its state
        kept: the kernel stays out of VIP traffic until the next director adopts the table)."""
        with self._lock:
            self.installed = False


def stale_tables(names: Iterable[str], own: Optional[str] = None,
                 state_root: str = statedir.STATE_ROOT, claimed: bool = False) -> list[str]:
    """Which of these nft table names are guards nobody will come back for.

    ``lvsuser_<pid>`` (a director without a control socket, or an older version): stale once
    that process is gone.  ``lvsuser_<state tag>``: kept while the director's state directory
    exists -- it keeps the kernel quiet until that director, restarted, adopts the table --
    and stale once the state is gone; but when the caller holds this namespace's claim
    (`claimed`, director/instance.py) no other director serves here, so another director's
    table only hides traffic from the one that does: stale too.  `own` is never stale."""
    stale = []
    for name in names:
        if name == own or not name.startswith(TABLE_PREFIX):
            continue
        rest = name[len(TABLE_PREFIX):]
        if rest.isdigit():
            pid = int(rest)
            if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                stale.append(name)
        elif rest and (claimed or not os.path.isdir(os.path.join(state_root, rest))):
            stale.append(name)
    return stale


def sweep_stale(own: Optional[str] = None, claimed: bool = False) -> list[str]:
    """Delete the guard tables of this namespace that `stale_tables` finds stale."""
    try:
        proc = subprocess.run(["nft", "list", "tables", "netdev"], text=True, capture_output=True,
                              timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    names = [m.group(1) for m in (re.match(r"table netdev (\S+)$", line.strip())
                                  for line in proc.stdout.splitlines()) if m]
    removed = []
    for name in stale_tables(names, own, claimed=claimed):
        try:
            _run_nft(f"delete table netdev {name}\n")
            removed.append(name)
        except GuardError:
            pass
    return removed


def is_ipv6(addr) -> bool:
    return ipaddress.ip_address(addr).version == 6
