"""Watch the nft guard and put it back when something removes or changes it.

Theory of operation
-------------------
Anything on the host may rewrite nftables: `nft flush ruleset`, a firewall reload, an operator's
`nft delete table`.  Without the guard the director's kernel answers VIP traffic (RST for a
local VIP) and forwards NAT replies un-rewritten, and nothing says why.

The kernel announces every nftables change on the netlink multicast group NFNLGRP_NFTABLES
(what `nft monitor` listens to).  We subscribe to it from a daemon thread; a message means only
"something changed", so after a short quiet period (a firewall reload is a burst of messages) we
ask the guard whether its table still lists as it did when installed (one `nft list table`), and
if not it restores the table in one transaction and logs one WARNING line.  Our own ``apply``
causes messages too; the comparison then finds the new listing and does nothing.

Nothing is spawned while nftables is quiet except the backstop: a verification every
``backstop`` seconds, covering lost messages (the socket may overflow) and a kernel that refuses
the subscription.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7


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


class GuardWatch:
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
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="lvsuser-guardwatch", daemon=True)

    def start(self) -> "GuardWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self._stop_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        for sock in (self.sock, self._stop_r, self._stop_w):
            if sock is not None:
                sock.close()

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except OSError:  # EAGAIN: drained; ENOBUFS: events lost, the check below covers them
                return

    def _loop(self) -> None:
        watched = [self._stop_r] + ([self.sock] if self.sock is not None else [])
        last_check = time.monotonic()
        while True:
            timeout = max(0.0, last_check + self.backstop - time.monotonic())
            ready, _, _ = select.select(watched, [], [], timeout)
            if self._stop_r in ready:
                return
            if self.sock is not None and self.sock in ready:
                # let the burst end (bounded: a steady stream still gets checked)
                deadline = time.monotonic() + 10 * self.debounce
                self._drain()
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
