"""What every checker gets and gives back.

A checker is a coroutine ``check(config, target, timeout) -> Result`` on the check loop; it
must finish within ``timeout`` (connect_timeout: keepalived bounds each connection with it) and
hold no thread.  ``Target`` is where it connects: connect_ip/connect_port if the checker names
them, else the real server's address and port, from bindto/bind_port if given.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Target:
    addr: str
    port: int
    bindto: Optional[str] = None
    bind_port: int = 0

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ipaddress.ip_address(self.addr).version == 6 else socket.AF_INET

    @property
    def local(self) -> Optional[tuple]:
        if self.bindto is None and not self.bind_port:
            return None
        return (self.bindto or ("::" if self.family == socket.AF_INET6 else "0.0.0.0"),
                self.bind_port)

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Result:
    ok: bool
    reason: str = ""
    weight: Optional[int] = None  # MISC_CHECK misc_dynamic: the weight the script asked for


def target_for(checker, rs) -> Target:
    return Target(addr=str(checker.connect_ip or rs.addr),
                  port=int(checker.connect_port or rs.port),
                  bindto=checker.bindto, bind_port=int(checker.bind_port or 0))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own strerror says only "Connect call failed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
