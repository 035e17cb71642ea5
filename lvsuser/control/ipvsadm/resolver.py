"""Name resolution as ipvsadm does it (without ``-n``): the C library's name services.

The default ``Resolver`` asks exactly what ipvsadm asks (gethostbyname, gethostbyaddr,
getservbyname, getservbyport); tests substitute their own to pin names, and ``NumericResolver``
resolves nothing.
"""
from __future__ import annotations

import socket

from lvsuser.control.ipvsadm.constants import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

# The services database's protocol names.
PROTO_DB_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}


class Resolver:
    """The C library's name services, as ipvsadm calls them; tests substitute their own."""

    def host_to_addr(self, name: str) -> bytes | None:
        if not name:  # glibc's gethostbyname("") fails; Python's answers 0.0.0.0 (INADDR_ANY)
            return None
        try:
            return socket.inet_aton(socket.gethostbyname(name))
        except (OSError, UnicodeError, ValueError):
            return None

    def addr_to_host(self, af: int, packed: bytes) -> str | None:
        try:
            return socket.gethostbyaddr(socket.inet_ntop(af, packed))[0]
        except (OSError, UnicodeError, ValueError):
            return None

    def service_to_port(self, name: str, proto: str) -> int | None:
        try:
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError, ValueError):
            return None

    def port_to_service(self, port: int, proto: str) -> str | None:
        try:
            return socket.getservbyport(port, proto)
        except (OSError, OverflowError, ValueError):
            return None


class NumericResolver(Resolver):
    """Resolves nothing: every address and port prints as a number."""

    def host_to_addr(self, name):
        return None

    def addr_to_host(self, af, packed):
        return None

    def service_to_port(self, name, proto):
        return None

    def port_to_service(self, port, proto):
        return None
