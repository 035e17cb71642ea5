"""MISC_CHECK (check_misc.c): run misc_path -- a program and its arguments, split as keepalived
splits them (quotes and escapes), executed directly, no shell -- with a null stdin.  Exit 0 is
up, anything else down.  With misc_dynamic an exit code of 2..255 is up too and sets the real
server's weight to code - 2 (1 stays a failure; 0 leaves the weight as it is).  A script still
running at misc_timeout is terminated (its whole process group) and counts as failed."""
from __future__ import annotations

import asyncio
import os
import shlex
import signal

from lvsuser.check.base import Result, Target

TERM_GRACE = 0.5  # SIGTERM, then SIGKILL if the script ignores it


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


async def check(config, target: Target, timeout: float) -> Result:
    command = config.options.get("misc_path", "")
    dynamic = bool(config.options.get("misc_dynamic"))
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return Result(False, f"misc_path {command!r}: {exc}")
    if not argv:
        return Result(False, "empty misc_path")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return Result(False, f"cannot run {argv[0]}: {os.strerror(exc.errno or 0)}")
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), TERM_GRACE)
        except asyncio.TimeoutError:
            pass
        _signal_group(process.pid, signal.SIGKILL)  # and whatever it started
        await process.wait()
        return Result(False, "timed out")
    _signal_group(process.pid, signal.SIGKILL)  # children it left behind
    if code == 0:
        return Result(True, "exit 0")
    if dynamic and 2 <= code <= 255:
        return Result(True, f"exit {code}", weight=code - 2)
    return Result(False, f"exit {code}" if code >= 0 else f"signal {-code}")
