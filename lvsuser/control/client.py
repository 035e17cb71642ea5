"""``RemoteBackend``: the Backend interface, spoken over the control socket to `lvsuser run`."""
from __future__ import annotations

import errno
from typing import Any, Optional

from lvsuser.backends.base import Backend, BatchFailed
from lvsuser.control import protocol
from lvsuser.control.link import ControlLink
from lvsuser.model import Dest, IPVSError, MarkRule, Service, ServiceKey, SyncDaemon, Timeouts


class RemoteBackend(Backend):
    """Each call is one request/reply on a connection opened at first use."""

    name = "remote"

    def __init__(self, path: Optional[str] = None, timeout: float = 30.0,
                 link: Optional[ControlLink] = None):
        self.link = link or ControlLink(path, timeout)
        self.path = self.link.path

    def connect(self) -> None:
        self.link.connect()

    def close(self, keep_state: bool = False) -> None:
        self.link.close()

    def call(self, op: str, **args: Any) -> Any:
        return result_of(self.link.call_raw(op, protocol.encode(args)))

    # --- Backend ------------------------------------------------------------------------------
    def ping(self) -> bool:
        return self.call("ping") == "pong"

    def get_info(self) -> dict:
        return self.call("get_info")

    def get_counters(self) -> dict:
        return self.call("get_counters")

    def add_service(self, svc: Service) -> None:
        self.call("add_service", svc=svc)

    def edit_service(self, svc: Service) -> None:
        self.call("edit_service", svc=svc)

    def del_service(self, key: ServiceKey) -> None:
        self.call("del_service", key=key)

    def get_services(self) -> list[Service]:
        return self.call("get_services")

    def get_service(self, key: ServiceKey) -> Optional[Service]:
        return self.call("get_service", key=key)

    def flush(self) -> None:
        self.call("flush")

    def zero(self, key: Optional[ServiceKey] = None) -> None:
        self.call("zero", key=key)

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.call("add_dest", key=key, dest=dest)

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.call("edit_dest", key=key, dest=dest)

    def del_dest(self, key: ServiceKey, dest: Dest) -> None:
        self.call("del_dest", key=key, dest=dest)

    def get_timeouts(self) -> Timeouts:
        return self.call("get_timeouts")

    def set_timeouts(self, timeouts: Timeouts) -> None:
        self.call("set_timeouts", timeouts=timeouts)

    def get_connections(self) -> list[dict]:
        return list(self.iter_connections())

    def get_connections_page(self, cursor: int = 0,
                             limit: Optional[int] = None) -> tuple[list[dict], int]:
        """One page of the director's listing (see protocol.py: listings are paged)."""
        rows, following = self.call("get_connections_page", cursor=cursor,
                                    limit=limit or protocol.page_rows())
        return rows, following

    def add_mark_rule(self, rule: MarkRule) -> None:
        self.call("add_mark_rule", rule=rule)

    def del_mark_rule(self, rule: MarkRule) -> None:
        self.call("del_mark_rule", rule=rule)

    def get_mark_rules(self) -> list[MarkRule]:
        return self.call("get_mark_rules")

    def start_daemon(self, daemon: SyncDaemon) -> None:
        self.call("start_daemon", daemon=daemon)

    def stop_daemon(self, state: str) -> None:
        self.call("stop_daemon", state=state)

    def get_daemons(self) -> list[SyncDaemon]:
        return self.call("get_daemons")

    def apply_batch(self, operations: list[tuple[str, dict]]) -> None:
        """All-or-nothing on the daemon's side; BatchFailed names the refused operation."""
        self.call("apply_batch", operations=[(op, kwargs) for op, kwargs in operations])


def result_of(reply: dict) -> Any:
    """A reply's result as model objects; a refusal raised as IPVSError (BatchFailed for a batch)."""
    if reply.get("ok"):
        return protocol.decode(reply.get("result"))
    if "index" in reply:
        raise BatchFailed(reply["index"], reply.get("errno", errno.EIO), reply.get("message", ""))
    raise IPVSError(reply.get("errno", errno.EIO), reply.get("message", ""))
