"""The one model every backend implements: the operations of IPVS's generic netlink family.

Theory of operation
-------------------
ipvsadm talks to the kernel through libipvs: a handful of commands (GET_INFO, NEW/SET/DEL_SERVICE,
NEW/SET/DEL_DEST, FLUSH, ZERO, SET/GET_CONFIG, NEW/DEL/GET_DAEMON) and the kernel's answers:
either data or an errno.  ipvsadm then turns (command, errno) into its own message.  We keep that
exact split: a backend applies operations and raises ``IPVSError(errno)`` with the errno the kernel
would return; the CLI, which knows ipvsadm's message table, formats everything.  That way the
user-space backend and the kernel backend are interchangeable under the same CLI, and their
errors are compared errno for errno.

Every method is atomic: a refused operation leaves the table exactly as it was.
"""
from __future__ import annotations

import abc
import errno
from typing import Iterator, Optional

from lvsuser.model import Dest, IPVSError, MarkRule, Service, ServiceKey, SyncDaemon, Timeouts


# Rows in a page of the connection listing, by default (the control socket's pages are
# smaller: protocol.PAGE_ROWS).
CONNECTIONS_PAGE = 4096


class BackendUnavailable(Exception):
    """The backend cannot run on this host; str(exc) is one sentence for the user."""


class BatchFailed(IPVSError):
    """A batch was refused at operation ``index``; nothing of it was applied."""

    def __init__(self, index: int, errno_: int, message: str = ""):
        super().__init__(errno_, message)
        self.index = index


class Backend(abc.ABC):
    """What `lvsuser run` drives; one instance per director."""

    name = "abstract"

    # --- info ---------------------------------------------------------------------------
    @abc.abstractmethod
    def get_info(self) -> dict:
        """{'version': (1, 2, 1), 'conn_tab_size': 4096}"""

    def get_counters(self) -> dict:
        """{'core': {name: n}, 'io': {name: n}}: what the datapath did with every packet (see
        lvsuser/counters.py).  Only a backend with a datapath of its own has them."""
        raise NotImplementedError

    # --- services -----------------------------------------------------------------------
    @abc.abstractmethod
    def add_service(self, svc: Service) -> None: ...

    @abc.abstractmethod
    def edit_service(self, svc: Service) -> None: ...

    @abc.abstractmethod
    def del_service(self, key: ServiceKey) -> None: ...

    @abc.abstractmethod
    def get_services(self) -> list[Service]:
        """All services in the kernel's listing order, each with its dests and current counters."""

    def get_service(self, key: ServiceKey) -> Optional[Service]:
        for svc in self.get_services():
            if svc.key == key:
                return svc
        return None

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def zero(self, key: Optional[ServiceKey] = None) -> None: ...

    # --- dests --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_dest(self, key: ServiceKey, dest: Dest) -> None: ...

    @abc.abstractmethod
    def edit_dest(self, key: ServiceKey, dest: Dest) -> None: ...

    @abc.abstractmethod
    def del_dest(self, key: ServiceKey, dest: Dest) -> None: ...

    # --- config -------------------------------------------------------------------------
    @abc.abstractmethod
    def get_timeouts(self) -> Timeouts: ...

    @abc.abstractmethod
    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Zero fields mean "leave unchanged", as in the kernel."""

    # --- connections ----------------------------------------------------------------------
    @abc.abstractmethod
    def get_connections(self) -> list[dict]:
        """Rows as /proc/net/ip_vs_conn has them: protocol, caddr, cport, vaddr, vport, daddr,
        dport, state (name), expires (seconds left), pe_name, pe_data."""

    def get_connections_page(self, cursor: int = 0,
                             limit: int = CONNECTIONS_PAGE) -> tuple[list[dict], int]:
        """At most ``limit`` rows of ``get_connections()`` from ``cursor`` on, and the cursor
        of the next page: 0 starts a listing, a returned 0 ends it; cursors are opaque.  A page
        may be short, even empty, before the end.  This default slices the whole listing (fine
        for a small table); a backend that may hold millions of connections pages them itself."""
        if cursor < 0 or limit <= 0:
            raise IPVSError(errno.EINVAL, "bad cursor or page size")
        rows = self.get_connections()
        end = cursor + limit
        return rows[cursor:end], (end if end < len(rows) else 0)

    def iter_connections(self) -> Iterator[dict]:
        """The rows of ``get_connections()``, page by page as they come."""
        cursor = 0
        while True:
            rows, cursor = self.get_connections_page(cursor)
            yield from rows
            if not cursor:
                return

    # --- firewall-mark rules (user space only: the kernel reads marks from netfilter) ------
    def add_mark_rule(self, rule: MarkRule) -> None:
        raise NotImplementedError

    def del_mark_rule(self, rule: MarkRule) -> None:
        raise NotImplementedError

    def get_mark_rules(self) -> list[MarkRule]:
        return []

    # --- sync daemon ----------------------------------------------------------------------
    def start_daemon(self, daemon: SyncDaemon) -> None:
        raise NotImplementedError

    def stop_daemon(self, state: str) -> None:
        raise NotImplementedError

    def get_daemons(self) -> list[SyncDaemon]:
        return []

    # --- batches -------------------------------------------------------------------------
    @abc.abstractmethod
    def apply_batch(self, operations: list[tuple[str, dict]]) -> None:
        """Apply (method name, keyword arguments) pairs all or nothing (``ipvsadm -R``, rules
        files).  A refused operation raises ``BatchFailed`` with its index; the table is then
        exactly as it was before the call.  A backend that cannot roll back must undo what it
        applied before raising."""

    def close(self, keep_state: bool = False) -> None:
        """Stop and release what the backend holds.  ``keep_state``: the director stops with
        rules in its table and will be started again (SIGTERM with a non-empty table); whatever
        lets the next start adopt the table -- and keeps the host quiet in between -- stays."""
