"""Watch the nft guard and put it back when something removes or changes it.

Theory of operation
-------------------
Anything on the host may rewrite nftables: `nft flush ruleset`, a firewall reload, an operator's
`nft delete table`.  Without the guard the director's kernel answers VIP traffic (RST for a
local VIP) and forwards NAT replies un-rewritten, and nothing says why.

The kernel announces every nftables change on the netlink multicast group NFNLGRP_NFTABLES
(what `nft monitor` listens to).  We subscribe to it from a daemon thread.  Each notification
names the table of the object it is about (attribute 1 of every nf_tables message: table, chain,
rule, set and element alike; `nft flush ruleset` sends one per deleted table), so messages about
other tables -- another program's firewall at work -- cost a glance and no process.  After a
message about ours and a short quiet period (a reload is a burst) we ask the guard whether its
table still lists as it did when installed (one `nft list table`), and if not it restores the
table in one transaction and logs one WARNING line.  Our own ``apply`` causes messages too; the
comparison then finds the new listing and does nothing.  A message we cannot read, or lost
messages (ENOBUFS), count as "maybe ours".

Nothing is spawned while nftables is quiet except the backstop: a verification every
``backstop`` seconds, covering lost messages (the socket may overflow) and a kernel that refuses
the subscription.
"""
from __future__ import annotations

import logging
import select
import socket
import struct
import time

from lvsuser.director.monitor import WatchThread

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFTA_TABLE_NAME = 1  # also NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...
NLA_TYPE_MASK = 0x3FFF
_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG_LEN = 4


def mentions_table(buf: bytes, table: str) -> bool:
    """Whether a batch of nf_tables notifications may concern `table` (unreadable: yes)."""
    name = table.encode()
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > len(buf):
            return True
        if msg_type >> 8 == NFNL_SUBSYS_NFTABLES:
            attr = off + _NLMSGHDR.size + _NFGENMSG_LEN
            end = off + length
            while attr + _NLATTR.size <= end:
                attr_len, attr_type = _NLATTR.unpack_from(buf, attr)
                if attr_len < _NLATTR.size or attr + attr_len > end:
                    return True
                if attr_type & NLA_TYPE_MASK == NFTA_TABLE_NAME:
                    if buf[attr + _NLATTR.size:attr + attr_len].rstrip(b"\0") == name:
                        return True
                    break
                attr += (attr_len + 3) & ~3
        off += (length + 3) & ~3
    return False


def open_nftables_events() -> socket.socket:
    """A netlink socket receiving every nftables change of the calling thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    except OSError:
        sock.close()
        raise
    return sock


class GuardWatch(WatchThread):
    """A daemon thread calling ``guard.restore()`` after nftables changes and every ``backstop`` s."""

    def __init__(self, guard, debounce: float = 0.05, backstop: float = 5.0):
        self.guard = guard
        self.debounce = debounce
        self.backstop = backstop
        self.checks = 0  # verifications run, for tests and curiosity
        # Opened by the caller's thread, so it watches the caller's namespace.
        try:
            self.sock = open_nftables_events()
        except OSError as exc:
            log.warning("cannot follow nftables changes (%s); checking the guard every %.0f s only",
                        exc, backstop)
            self.sock = None
        self._init_thread("lvsuser-guardwatch")

    def _drain(self) -> bool:
        """Read every waiting message; whether any may concern the guard's table."""
        relevant = False
        while True:
            try:
                buf = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return relevant
            except OSError:  # ENOBUFS: messages lost, ours maybe among them
                return True
            if not relevant and mentions_table(buf, self.guard.table):
                relevant = True

    def _loop(self) -> None:
        watched = [self._stop_r] + ([self.sock] if self.sock is not None else [])
        last_check = time.monotonic()
        while True:
            timeout = max(0.0, last_check + self.backstop - time.monotonic())
            ready, _, _ = select.select(watched, [], [], timeout)
            if self._stop_r in ready:
                return
            if self.sock is not None and self.sock in ready:
                if not self._drain():
                    continue  # another program's tables
                # let the burst end (bounded: a steady stream still gets checked)
                deadline = time.monotonic() + 10 * self.debounce
                while time.monotonic() < deadline:
                    more, _, _ = select.select([self.sock, self._stop_r], [], [], self.debounce)
                    if self._stop_r in more:
                        return
                    if not more:
                        break
                    self._drain()
            last_check = time.monotonic()
            self.checks += 1
            try:
                self.guard.restore()
            except Exception:  # keep watching; the next change or the backstop retries
                log.exception("checking the nft guard failed")
