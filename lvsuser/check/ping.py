"""PING_CHECK (check_ping.c): one ICMP (or ICMPv6) echo request; up if the matching echo
reply comes within connect_timeout.  An unprivileged ICMP datagram socket is used when the
host allows it (net.ipv4.ping_group_range), else a raw socket (root)."""
from __future__ import annotations

import asyncio
import os
import socket
import struct

from lvsuser.check.base import Result, Target, describe_error


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _open(family: int) -> tuple[socket.socket, bool]:
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError:
        return socket.socket(family, socket.SOCK_RAW, proto), True


async def check(config, target: Target, timeout: float) -> Result:
    family = target.family
    request_type, reply_type = (128, 129) if family == socket.AF_INET6 else (8, 0)
    ident = os.getpid() & 0xFFFF
    sequence = int.from_bytes(os.urandom(2), "big")
    payload = b"lvsuser-check" + os.urandom(8)
    header = struct.pack("!BBHHH", request_type, 0, 0, ident, sequence)
    packet = struct.pack("!BBHHH", request_type, 0, checksum(header + payload), ident,
                         sequence) + payload
    loop = asyncio.get_running_loop()
    try:
        sock, raw = _open(family)
    except OSError as exc:
        return Result(False, f"no ICMP socket: {describe_error(exc)}")
    sock.setblocking(False)
    try:
        if target.bindto:
            sock.bind((target.bindto, 0))
        sock.connect((target.addr, 0))
        await loop.sock_sendall(sock, packet)
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return Result(False, "timeout")
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), left)
            if raw and family == socket.AF_INET:
                data = data[(data[0] & 0x0F) * 4:]  # a raw IPv4 socket hands the IP header too
            if len(data) < 8:
                continue
            kind, _code, _sum, _ident, seq = struct.unpack("!BBHHH", data[:8])
            # a datagram ICMP socket rewrites the identifier: match sequence and payload
            if kind == reply_type and seq == sequence and data[8:] == payload:
                return Result(True, "echo reply")
    except (OSError, asyncio.TimeoutError) as exc:
        return Result(False, describe_error(exc))
    finally:
        sock.close()
