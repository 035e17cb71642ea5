"""TCP_CHECK (check_tcp.c): the real server is up if a TCP connection to it completes within
connect_timeout; the connection is closed at once."""
from __future__ import annotations

import asyncio

from lvsuser.check.base import Result, Target, describe_error


async def check(config, target: Target, timeout: float) -> Result:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.addr, target.port, local_addr=target.local), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return Result(False, describe_error(exc))
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (OSError, asyncio.TimeoutError):
        pass
    return Result(True, "connected")
