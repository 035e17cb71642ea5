"""What every scheduler is: the base class, the packet facts it may use, and the kernel's helpers.

A scheduler is built for one ``model.Service`` and reads ``service.dests`` live (weights,
connection counts, flags), as kernel schedulers read ``struct ip_vs_dest``.  Control calls
``update()`` after each change to the service's dests (add, edit or delete -- the kernel's
add_dest/upd_dest/del_dest hooks), once per change as the kernel does (wrr's position depends
on it), and ``schedule()`` once per new connection.  A dest is the same dest across changes when
its (address, port) is the same.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

from lvsuser import model

IPPROTO_TCP = model.IPPROTO_TCP
IPPROTO_UDP = model.IPPROTO_UDP
IPPROTO_SCTP = model.IPPROTO_SCTP

# IP_VS_SCHEDNAME_MAXLEN is 16 bytes including the terminating NUL.
SCHEDNAME_MAXLEN = 15

GOLDEN_RATIO_32 = 0x61C88647

# A plugin that raises costs its connection a real server (ICMP port unreachable, as when no
# dest is available), never the datapath; the operator learns of it from the log, at most once
# per scheduler per this many seconds, with how many failures were not logged in between.
SCHEDULE_ERROR_LOG_INTERVAL = 10.0
_log = logging.getLogger("lvsuser.scheduler")
_error_log_state: dict[int, list] = {}   # id(scheduler) -> [last log time, failures not logged]


def _service_text(service) -> str:
    """The service as ipvsadm -L -n names it: "TCP 198.18.0.100:80", "FWM 5"."""
    if getattr(service, "fwmark", 0):
        return f"FWM {service.fwmark}"
    addr = f"[{service.addr}]" if service.af == model.AF_INET6 else str(service.addr)
    return f"{model.PROTOCOL_NAMES.get(service.protocol, service.protocol)} {addr}:{service.port}"


def report_schedule_error(scheduler, service, exc: BaseException) -> None:
    """Log (rate-limited) that ``scheduler.schedule`` raised ``exc`` for ``service``."""
    now = time.monotonic()
    state = _error_log_state.setdefault(id(scheduler), [None, 0])
    if state[0] is not None and now - state[0] < SCHEDULE_ERROR_LOG_INTERVAL:
        state[1] += 1
        return
    name = getattr(scheduler, "name", type(scheduler).__name__)
    where = _service_text(service)
    more = f" ({state[1]} more failures since the last report)" if state[1] else ""
    _log.warning("scheduler %s of %s raised %s: %s; the connection got no real server%s",
                 name, where, type(exc).__name__, exc, more)
    state[0], state[1] = now, 0


@dataclasses.dataclass(frozen=True)
class PacketInfo:
    """The facts of a connection's first packet that schedulers may use (host-order ports)."""

    af: int
    protocol: int
    saddr: model.IPAddress
    sport: int
    daddr: model.IPAddress
    dport: int


class Scheduler:
    """Base class of built-in and plugin schedulers.

    Subclasses set ``name`` (what ``ipvsadm -s NAME`` selects) and implement ``schedule``;
    ``flags_supported`` lists the ``-b`` scheduler flags (model.SVC_F_SCHED1/2/3) it honours.
    """

    name: str = ""
    flags_supported: int = 0

    def __init__(self, service: model.Service):
        self.service = service

    def update(self) -> None:
        """The service's dests changed (added, edited or deleted)."""

    # The kernel's per-change hooks: the core calls the one that fits each change of this
    # service (``service.dests`` already shows it), and only for this service's changes.  A
    # scheduler with nothing smarter to do rebuilds with update().
    def add_dest(self, dest: model.Dest) -> None:
        """`dest` was added to the service."""
        self.update()

    def del_dest(self, dest: model.Dest) -> None:
        """`dest` was deleted from the service."""
        self.update()

    def upd_dest(self, dest: model.Dest) -> None:
        """`dest` was edited in place (weight, thresholds, method)."""
        self.update()

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        """The dest for a new connection, or None when no dest is available."""
        raise NotImplementedError


# --- the kernel's helpers -------------------------------------------------------------------

def dest_key(dest: model.Dest) -> tuple:
    """What makes a dest the same dest across changes (ip_vs_lookup_dest): address and port."""
    return (dest.addr, dest.port)


def overloaded(dest: model.Dest) -> bool:
    return bool(dest.flags & model.DEST_F_OVERLOAD)


def available(dest: model.Dest) -> bool:
    return bool(dest.flags & model.DEST_F_AVAILABLE)


def conn_overhead(dest: model.Dest) -> int:
    """ip_vs_dest_conn_overhead: an active connection weighs 256 inactive ones."""
    return (dest.activeconns << 8) + dest.inactconns


def addr_fold(addr: model.IPAddress) -> int:
    """ntohl of the address (IPv4) or of the xor of its four 32-bit words (IPv6)."""
    packed = addr.packed
    if len(packed) == 4:
        return int.from_bytes(packed, "big")
    value = 0
    for i in range(0, 16, 4):
        value ^= int.from_bytes(packed[i:i + 4], "big")
    return value


def hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h hash_32: multiply by GOLDEN_RATIO_32 mod 2**32, keep the top bits."""
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def weighted_least(candidates, overhead) -> Optional[model.Dest]:
    """The wlc-family search: the first usable dest, then any with a strictly lower
    overhead/weight ratio, compared as ``h1*w2 > h2*w1`` to avoid division (ip_vs_wlc.c).

    Overloaded dests are skipped; weight-0 dests can never win the comparison.
    """
    least = None
    least_overhead = 0
    for dest in candidates:
        if overloaded(dest):
            continue
        if least is None:
            if dest.weight > 0:
                least = dest
                least_overhead = overhead(dest)
            continue
        dest_overhead = overhead(dest)
        if least_overhead * dest.weight > dest_overhead * least.weight:
            least = dest
            least_overhead = dest_overhead
    return least
