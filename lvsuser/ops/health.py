"""Health-check state per real server: checkers report here, the metrics read it.

Theory of operation
-------------------
Health checks (lvsuser/check/) and the metrics endpoint (ops/metrics.py) run in the same
director process but know nothing of each other.  This module is the meeting point: a
process-wide ``HealthRegistry`` (``REGISTRY``) keyed by (service key, real-server address,
real-server port), which a checker updates and a scrape reads.  Reporting is a dict update under
a lock -- cheap enough to call after every check -- and needs no prometheus_client, so checkers
work the same whether or not ``--metrics`` is given.

The hook, for checkers::

    from lvsuser.ops import health
    health.set_real_server_health(svc.key, dest.addr, dest.port, up=False, checker="HTTP_GET")
    health.observe_health_check(svc.key, dest.addr, dest.port, ok=True, duration=0.012,
                                checker="HTTP_GET")
    health.forget_real_server(svc.key, dest.addr, dest.port)   # the real server is gone
    health.forget_real_server(svc.key)                          # ... or the whole service

What the metrics make of it (labels: node_exporter's six, see metrics.backend_labels):
``lvsuser_real_server_up`` (1/0, with a ``checker`` label), ``lvsuser_real_server_transitions_total``
(up<->down changes), ``lvsuser_health_checks_total{result="success"|"failure"}`` and
``lvsuser_health_check_duration_seconds`` (the last check's duration).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from typing import Optional, Union

from lvsuser.model import IPAddress, ServiceKey

AddressLike = Union[IPAddress, str]
HealthKey = tuple  # (ServiceKey, IPAddress, port)


@dataclasses.dataclass
class RealServerHealth:
    """What the checkers said about one real server of one service."""

    up: Optional[bool] = None  # None: checked (observed) but no state reported yet
    checker: str = ""
    transitions: int = 0  # up <-> down changes after the first state
    checks_ok: int = 0
    checks_failed: int = 0
    last_duration: Optional[float] = None  # seconds, of the last observed check
    changed_at: float = 0.0  # time.time() of the last state change


def _key(service: ServiceKey, addr: AddressLike, port: int) -> HealthKey:
    if not isinstance(service, ServiceKey):
        raise TypeError(f"service must be a ServiceKey, not {type(service).__name__}")
    address = addr if not isinstance(addr, str) else ipaddress.ip_address(addr)
    return (service, address, int(port))


class HealthRegistry:
    """Per-real-server health state, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[HealthKey, RealServerHealth] = {}

    def set_real_server_health(self, service: ServiceKey, addr: AddressLike, port: int, up: bool,
                               checker: str = "") -> None:
        """The real server ADDR:PORT of SERVICE is now up (in the pool) or down."""
        key = _key(service, addr, port)
        with self._lock:
            state = self._states.setdefault(key, RealServerHealth())
            if state.up is not None and state.up != bool(up):
                state.transitions += 1
            if state.up != bool(up):
                state.changed_at = time.time()
            state.up = bool(up)
            if checker:
                state.checker = checker

    def observe_health_check(self, service: ServiceKey, addr: AddressLike, port: int, ok: bool,
                             duration: Optional[float] = None, checker: str = "") -> None:
        """One check of ADDR:PORT ran: it passed (OK) or failed, taking DURATION seconds."""
        key = _key(service, addr, port)
        with self._lock:
            state = self._states.setdefault(key, RealServerHealth())
            if ok:
                state.checks_ok += 1
            else:
                state.checks_failed += 1
            if duration is not None:
                state.last_duration = float(duration)
            if checker:
                state.checker = checker

    def forget_real_server(self, service: ServiceKey, addr: Optional[AddressLike] = None,
                           port: Optional[int] = None) -> None:
        """Drop one real server's state, or (ADDR None) every real server of SERVICE."""
        with self._lock:
            if addr is None:
                for key in [k for k in self._states if k[0] == service]:
                    del self._states[key]
            else:
                self._states.pop(_key(service, addr, port or 0), None)

    def snapshot(self) -> dict[HealthKey, RealServerHealth]:
        """Copies of every state, for a scrape."""
        with self._lock:
            return {key: dataclasses.replace(state) for key, state in self._states.items()}

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


REGISTRY = HealthRegistry()

set_real_server_health = REGISTRY.set_real_server_health
observe_health_check = REGISTRY.observe_health_check
forget_real_server = REGISTRY.forget_real_server
