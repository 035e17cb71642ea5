"""MISC_CHECK (check_misc.c): run misc_path; exit 0 is up, anything else down.  With
misc_dynamic an exit code of 2..255 is up too and sets the real server's weight to code - 2
(1 stays a failure).  A script still running at misc_timeout is killed and counts as failed.
The script runs through the shell as keepalived's does, with a null stdin."""
from __future__ import annotations

import asyncio
import os
import signal

from lvsuser.check.base import Result, Target


async def check(config, target: Target, timeout: float) -> Result:
    command = config.options.get("misc_path", "")
    dynamic = bool(config.options.get("misc_dynamic"))
    try:
        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return Result(False, f"cannot run {command!r}: {exc.strerror}")
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        try:  # the whole session: the shell and what it started
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await process.wait()
        return Result(False, "timed out")
    if code == 0:
        return Result(True, "exit 0", weight=None)
    if dynamic and 2 <= code <= 255:
        return Result(True, f"exit {code}", weight=code - 2)
    return Result(False, f"exit {code}" if code >= 0 else f"signal {-code}")
