"""Follow the kernel's links, addresses, routes and neighbours; call back when any changes.

Theory of operation
-------------------
The forwarding facts the core holds (egress interface, MACs, MTU per real server) are copies of
kernel state, so they go stale when an interface, a route or a neighbour changes.  We listen on an
rtnetlink socket subscribed to those multicast groups and, after a quiet period (``debounce``
seconds, so a burst of events costs one republish), call ``on_change()``.  The messages are not
parsed: re-resolving everything is cheap (a route lookup per real server) and the callback
publishes only when the result differs.  ``on_change()`` also runs every ``refresh`` seconds, which
retries neighbours still being resolved and covers a lost event (the socket can overflow).
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
          | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE)


class WatchThread:
    """A daemon thread around one netlink socket (``self.sock``, may be None), stopped through a
    socketpair its loop also polls; the subclass opens the socket and writes ``_loop``."""

    def _init_thread(self, name: str) -> None:
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self):
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


class Monitor(WatchThread):
    """A daemon thread that calls ``on_change()`` after kernel network changes (and periodically)."""

    def __init__(self, on_change, debounce: float = 0.05, refresh: float = 1.0):
        self.on_change = on_change
        self.debounce = debounce
        self.refresh = refresh
        # Opened by the caller's thread, so it watches the caller's namespace.
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, GROUPS))
        self._init_thread("lvsuser-netlink")

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: we lost events; the republish below covers them
                return

    def _loop(self) -> None:
        last_run = time.monotonic()
        dirty_since = None
        while True:
            if dirty_since is not None:
                timeout = self.debounce
            else:
                timeout = max(0.0, last_run + self.refresh - time.monotonic())
            ready, _, _ = select.select([self.sock, self._stop_r], [], [], timeout)
            if self._stop_r in ready:
                return
            if self.sock in ready:
                self._drain()
                if dirty_since is None:
                    dirty_since = time.monotonic()
                # wait for the burst to end, but never longer than 10 debounce periods
                if time.monotonic() - dirty_since < 10 * self.debounce:
                    continue
            dirty = dirty_since is not None
            dirty_since = None
            if dirty or time.monotonic() - last_run >= self.refresh:
                dirty = False
                last_run = time.monotonic()
                try:
                    self.on_change()
                except Exception:  # keep following changes; the next event retries
                    log.exception("republishing after a network change failed")
