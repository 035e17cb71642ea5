"""``RemoteBackend``: the Backend interface, spoken over the control socket to `lvsuser run`."""
from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any, Optional

from lvsuser.backends.base import Backend
from lvsuser.control import protocol
from lvsuser.model import Dest, IPVSError, MarkRule, Service, ServiceKey, SyncDaemon, Timeouts


class ControlUnreachable(OSError):
    """No director answers on the control socket; str() names the socket and the reason."""


def default_socket_path() -> str:
    return os.environ.get(protocol.ENV_SOCKET) or protocol.DEFAULT_SOCKET


class RemoteBackend(Backend):
    """Each call is one request/reply on a connection opened at first use."""

    name = "remote"

    def __init__(self, path: Optional[str] = None, timeout: float = 30.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._reader = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        with self._lock:
            self._connect_locked()

    def _connect_locked(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise ControlUnreachable(exc.errno or errno.ECONNREFUSED,
                                     f"cannot connect to {self.path}: {reason}") from exc
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._reader = None

    def call(self, op: str, **args: Any) -> Any:
        with self._lock:
            self._connect_locked()
            try:
                self._sock.sendall(protocol.request(op, **args))
                line = self._reader.readline(protocol.MAX_LINE + 1)
            except OSError as exc:
                self._sock = None
                raise ControlUnreachable(exc.errno or errno.EPIPE,
                                         f"lost connection to {self.path}: {exc}") from exc
            if not line:
                self._sock = None
                raise ControlUnreachable(errno.ECONNRESET, f"{self.path} closed the connection")
        reply = protocol.load_line(line)
        if reply.get("ok"):
            return protocol.decode(reply.get("result"))
        if "index" in reply:
            from lvsuser.backends.table import BatchFailed
            raise BatchFailed(reply["index"], reply.get("errno", errno.EIO), reply.get("message", ""))
        raise IPVSError(reply.get("errno", errno.EIO), reply.get("message", ""))

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
        return self.call("get_connections")

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
