"""sh: source hashing (ip_vs_sh.c).

A 256-bucket table maps hash(source address [+ source port]) to a dest.  It is rebuilt on every
dest change by walking the dest list in order, giving each dest ``weight`` consecutive buckets
(at least one, also at weight 0) and wrapping around the list until all 256 are filled.  The
bucket is ``hash_32(ntohs(port) + ntohl(addr_fold), 8)``.  A dest that is overloaded or has
weight 0 gets nothing -- unless the service has the sh-fallback flag, then the table is searched
onwards (bucket (offset + 2 * hash) & 255 for offset 0..255, as the kernel computes it) for the
first available dest.  With sh-port the source port (TCP, UDP, SCTP) joins the hash.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import (IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo,
                                     Scheduler, addr_fold, hash_32, overloaded)

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)


def sh_hashkey(addr: model.IPAddress, port: int, offset: int) -> int:
    return (offset + hash_32((port + addr_fold(addr)) & 0xFFFFFFFF, TAB_BITS)) & TAB_MASK


def unavailable(dest: model.Dest) -> bool:
    return dest.weight <= 0 or overloaded(dest)


def build_weighted_table(dests: list, size: int) -> list:
    """ip_vs_sh_reassign: each dest fills max(weight, 1) buckets in turn, cycling the list."""
    if not dests:
        return [None] * size
    table = []
    position = 0
    filled = 0
    while len(table) < size:
        dest = dests[position]
        table.append(dest)
        filled += 1
        if filled >= dest.weight:
            position = (position + 1) % len(dests)
            filled = 0
    return table


@register
class SourceHashing(Scheduler):
    name = "sh"
    flags_supported = model.SVC_F_SCHED_SH_FALLBACK | model.SVC_F_SCHED_SH_PORT

    def __init__(self, service: model.Service):
        super().__init__(service)
        self.update()

    def update(self) -> None:
        self.table = build_weighted_table(list(self.service.dests), TAB_SIZE)

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        port = 0
        if self.service.flags & model.SVC_F_SCHED_SH_PORT and pkt.protocol in PORT_PROTOCOLS:
            port = pkt.sport
        ihash = sh_hashkey(pkt.saddr, port, 0)
        dest = self.table[ihash]
        if dest is None:
            return None
        if not unavailable(dest):
            return dest
        if not self.service.flags & model.SVC_F_SCHED_SH_FALLBACK:
            return None
        for offset in range(TAB_SIZE):
            roffset = (offset + ihash) % TAB_SIZE
            dest = self.table[sh_hashkey(pkt.saddr, port, roffset)]
            if not unavailable(dest):
                return dest
        return None
