"""ipvsadm's argument parsing helpers, with the C library's number and address parsing.

``string_to_number`` is ipvsadm's (strtol that must consume the whole word), ``atoi`` C's (a
prefix of digits, wrapped into an int), ``inet_aton`` glibc's (which takes ``1.2.3`` and
``0x7f.1``).  ``parse_service`` fills a ``ServiceArgs`` from ``host[:port]`` or
``[v6addr]:port`` as ipvsadm's parse_service does; the rest turn one option's value into a
number or call ``fail()`` with ipvsadm's message.
"""
from __future__ import annotations

import socket

from lvsuser.control.ipvsadm.args import ServiceArgs
from lvsuser.control.ipvsadm.constants import (
    AF_INET,
    AF_INET6,
    DEF_SCHED,
    IPVS_SVC_PERSISTENT_TIMEOUT,
    SERVICE_ADDR,
    SERVICE_NONE,
    SERVICE_PORT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    UINT_MAX,
)
from lvsuser.control.ipvsadm.errors import fail
from lvsuser.control.ipvsadm.resolver import PROTO_DB_NAMES, Resolver


def strtol_whole(text: str) -> int | None:
    """strtol(text, &end, 10) that must consume everything: None if it does not."""
    stripped = text.lstrip(" \t\n\v\f\r")
    body = stripped
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = sign * int(body)
    if value > 2**63 - 1 or value < -(2**63):
        return None  # ERANGE
    return value


def string_to_number(text: str, low: int, high: int) -> int:
    number = strtol_whole(text)
    if number is None or not low <= number <= high:
        return -1
    return number


def atoi(text: str) -> int:
    stripped = text.lstrip(" \t\n\v\f\r")
    digits = ""
    sign = 1
    if stripped[:1] in ("+", "-"):
        sign = -1 if stripped[0] == "-" else 1
        stripped = stripped[1:]
    for ch in stripped:
        if "0" <= ch <= "9":
            digits += ch
        else:
            break
    value = sign * int(digits) if digits else 0
    return ((value + 2**31) % 2**32) - 2**31  # atoi into an int, as C would wrap it


def str_is_digit(text: str) -> bool:
    return all("0" <= ch <= "9" for ch in text)


def inet_aton(text: str) -> bytes | None:
    if "\0" in text:
        return None
    try:
        return socket.inet_aton(text)
    except (OSError, UnicodeError, ValueError):
        return None


def inet_pton6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, UnicodeError, ValueError):
        return None


def parse_service(buf: str | None, svc: ServiceArgs, resolver: Resolver) -> int:
    """ipvsadm's parse_service: SERVICE_ADDR|SERVICE_PORT bits, or SERVICE_NONE."""
    if buf is None or str_is_digit(buf):
        return SERVICE_NONE
    port_text: str | None = None
    if buf.startswith("["):
        buf = buf[1:]
        close = buf.find("]")
        if close < 0:
            return SERVICE_NONE
        after = buf[close + 1:]
        buf = buf[:close]
        if not after.startswith(":"):
            return SERVICE_NONE
        port_text = after[1:]
    packed6 = inet_pton6(buf)
    if packed6 is not None:
        svc.addr = packed6
        svc.af = AF_INET6
        svc.netmask = 128
    else:
        colon = buf.rfind(":")
        if colon >= 0:
            port_text = buf[colon + 1:]
            buf = buf[:colon]
        else:
            port_text = None
        packed = inet_aton(buf)
        if packed is None:
            packed = resolver.host_to_addr(buf)
        if packed is None:
            return SERVICE_NONE
        svc.addr = packed
        svc.af = AF_INET
    result = SERVICE_ADDR
    if port_text is not None:
        result |= SERVICE_PORT
        number = string_to_number(port_text, 0, 65535)
        if number == -1:
            proto_name = PROTO_DB_NAMES.get(svc.protocol)
            found = resolver.service_to_port(port_text, proto_name) if proto_name else None
            if found is None:
                return SERVICE_NONE
            number = found
        svc.port = number
    return result


def parse_netmask(buf: str, resolver: Resolver) -> int | None:
    packed = inet_aton(buf)
    if packed is None:
        packed = resolver.host_to_addr(buf)
    if packed is None:
        return None
    return int.from_bytes(packed, "big")


def parse_timeout(buf: str | None, low: int, high: int) -> int:
    if buf is None:
        return IPVS_SVC_PERSISTENT_TIMEOUT
    value = string_to_number(buf, low, high)
    if value == -1:
        fail(2, f"invalid timeout value `{buf}' specified")
    return value


def parse_fwmark(buf: str) -> int:
    value = strtol_whole(buf)
    if value is None or value <= 0 or value > UINT_MAX:
        fail(2, f"invalid fwmark value `{buf}' specified")
    return value


def parse_sched_flags(sched: str, arg: str) -> int:
    sched = sched or DEF_SCHED
    flags = 0
    tokens = [t for t in arg.split(",") if t]
    if not tokens:
        fail(2, "invalid scheduler flag `(null)'")
    for flag in tokens:
        if flag == "flag-1":
            flags |= SVC_F_SCHED1
        elif flag == "flag-2":
            flags |= SVC_F_SCHED2
        elif flag == "flag-3":
            flags |= SVC_F_SCHED3
        elif flag in ("sh-fallback", "sh-port", "mh-fallback", "mh-port"):
            flags |= SVC_F_SCHED1 if flag.endswith("fallback") else SVC_F_SCHED2
            if sched != flag[:2]:
                fail(2, f"incompatible scheduler flag `{flag}'")
        else:
            fail(2, f"invalid scheduler flag `{flag}'")
    return flags
