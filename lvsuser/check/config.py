"""What the health checker is told to do: virtual servers, their real servers, their checkers.

These are plain values (the keepalived.conf reader builds them, tests build them by hand); the
running state lives in ``realserver.py`` and the rule changes in ``ipwrapper.py``.  Times are in
seconds (floats).  ``None`` in a checker's timing fields means "inherit": a checker takes what
its real server or virtual server says, then keepalived's defaults (see ``resolve``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from lvsuser.model import Dest, Forward, Service, TunType

# keepalived's defaults (check_api.c / check_data.c)
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RETRY = 1
DEFAULT_DELAY_BEFORE_RETRY = 1.0
HTTP_DELAY_BEFORE_RETRY = 3.0  # HTTP_GET/SSL_GET's own default
MISC_RETRY = 0  # a script is not retried unless told


@dataclasses.dataclass
class CheckerConfig:
    """One checker block of a real server (TCP_CHECK { ... } and friends)."""

    kind: str  # TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK, UDP_CHECK, DNS_CHECK, PING_CHECK
    delay_loop: Optional[float] = None
    retry: Optional[int] = None
    delay_before_retry: Optional[float] = None
    connect_timeout: Optional[float] = None
    warmup: Optional[float] = None
    alpha: Optional[bool] = None
    connect_ip: Optional[str] = None
    connect_port: Optional[int] = None
    bindto: Optional[str] = None
    bind_port: Optional[int] = None
    # checker specific: HTTP urls [{'path','digest','status_code': set}], virtualhost,
    # misc_path, misc_timeout, misc_dynamic, payload, require_reply, type, name
    options: dict = dataclasses.field(default_factory=dict)

    def identity(self) -> tuple:
        """What makes two checkers "the same" across a reload (keepalived's compare funcs)."""
        return (self.kind, self.connect_ip, self.connect_port, self.bindto, self.bind_port,
                repr(sorted(self.options.items())))


@dataclasses.dataclass
class RealServerConfig:
    addr: object  # ipaddress object
    port: int
    weight: int = 1
    fwd: Forward = Forward.MASQ
    u_threshold: int = 0
    l_threshold: int = 0
    tunnel: tuple = (0, 0, 0)  # lvs_method TUN's (tun_type, tun_port, tun_flags)
    inhibit_on_failure: bool = False
    notify_up: Optional[list[str]] = None  # argv, as keepalived splits the script line
    notify_down: Optional[list[str]] = None
    delay_loop: Optional[float] = None
    alpha: Optional[bool] = None
    retry: Optional[int] = None
    delay_before_retry: Optional[float] = None
    connect_timeout: Optional[float] = None
    warmup: Optional[float] = None
    checkers: list[CheckerConfig] = dataclasses.field(default_factory=list)
    where: str = ""  # file:line, for messages

    @property
    def key(self) -> tuple:
        return (self.addr, self.port)

    def dest(self, weight: Optional[int] = None, af: int = 0) -> Dest:
        tun_type, tun_port, tun_flags = self.tunnel
        return Dest(addr=self.addr, port=self.port, fwd=self.fwd,
                    weight=self.weight if weight is None else weight,
                    u_threshold=self.u_threshold, l_threshold=self.l_threshold,
                    tun_type=TunType(tun_type), tun_port=tun_port, tun_flags=tun_flags,
                    af=af or (10 if self.addr.version == 6 else 2))


@dataclasses.dataclass
class VirtualServerConfig:
    """One virtual_server block: the services it stands for (one, or a group's entries)."""

    name: str  # "198.18.0.1 80 TCP", "fwmark 5", "group NAME 80": for logs
    services: list[Service]  # templates without dests
    real_servers: list[RealServerConfig] = dataclasses.field(default_factory=list)
    sorry_server: Optional[RealServerConfig] = None
    delay_loop: float = DEFAULT_DELAY_LOOP
    connect_timeout: Optional[float] = None
    retry: Optional[int] = None
    delay_before_retry: Optional[float] = None
    warmup: Optional[float] = None
    alpha: bool = False
    omega: bool = False
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: Optional[list[str]] = None
    quorum_down: Optional[list[str]] = None
    ha_suspend: bool = False
    where: str = ""

    @property
    def key(self) -> tuple:
        return tuple(sorted(repr(s.key) for s in self.services))


@dataclasses.dataclass
class Timing:
    """A checker's resolved timing: what the scheduler uses."""

    delay_loop: float
    retry: int
    delay_before_retry: float
    connect_timeout: float
    warmup: float
    alpha: bool


def _first(*values):
    for value in values:
        if value is not None:
            return value
    return None


def resolve(vs: VirtualServerConfig, rs: RealServerConfig, checker: CheckerConfig) -> Timing:
    """checker, then real server, then virtual server, then keepalived's defaults."""
    delay_loop = _first(checker.delay_loop, rs.delay_loop, vs.delay_loop, DEFAULT_DELAY_LOOP)
    if checker.kind in ("HTTP_GET", "SSL_GET"):
        default_before_retry = HTTP_DELAY_BEFORE_RETRY
    else:
        default_before_retry = DEFAULT_DELAY_BEFORE_RETRY
    default_retry = MISC_RETRY if checker.kind == "MISC_CHECK" else DEFAULT_RETRY
    connect_timeout = _first(checker.connect_timeout, rs.connect_timeout, vs.connect_timeout,
                             DEFAULT_CONNECT_TIMEOUT)
    if checker.kind == "MISC_CHECK":  # a script's budget is misc_timeout, else delay_loop
        connect_timeout = _first(checker.options.get("misc_timeout"), delay_loop)
    return Timing(
        delay_loop=float(delay_loop),
        retry=int(_first(checker.retry, rs.retry, vs.retry, default_retry)),
        delay_before_retry=float(_first(checker.delay_before_retry, rs.delay_before_retry,
                                        vs.delay_before_retry, default_before_retry)),
        connect_timeout=float(connect_timeout),
        # keepalived waits a random part of warmup before a checker's first run; unset, that
        # is the checker's delay_loop
        warmup=float(_first(checker.warmup, rs.warmup, vs.warmup, delay_loop)),
        alpha=bool(_first(checker.alpha, rs.alpha, vs.alpha, False)),
    )
