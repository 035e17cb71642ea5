"""UDP_CHECK (check_udp.c): send the payload (empty unless given) to the real server.  An ICMP
error (port unreachable: ECONNREFUSED on the connected socket) is a failure; otherwise, with
require_reply, an answer must come within connect_timeout (and begin with the expected
bytes: keepalived compares the reply to the payload it names), and without it, silence until
connect_timeout counts as up."""
from __future__ import annotations

import asyncio
import socket

from lvsuser.check.base import Result, Target, describe_error


async def exchange(target: Target, payload: bytes, timeout: float) -> bytes | None:
    """Send payload on a connected UDP socket; the reply, None on silence; raises OSError on an
    ICMP error."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(target.family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        if target.local:
            sock.bind(target.local)
        sock.connect((target.addr, target.port))
        await loop.sock_sendall(sock, payload)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        except asyncio.TimeoutError:
            return None
    finally:
        sock.close()


async def check(config, target: Target, timeout: float) -> Result:
    payload = config.options.get("payload", b"")
    try:
        reply = await exchange(target, payload, timeout)
    except OSError as exc:
        return Result(False, describe_error(exc))
    if config.options.get("require_reply"):
        if reply is None:
            return Result(False, "no reply")
        expected = config.options.get("reply_data")
        if expected is not None and not reply.startswith(expected):
            return Result(False, "unexpected reply")
    return Result(True, "no error" if reply is None else "replied")
