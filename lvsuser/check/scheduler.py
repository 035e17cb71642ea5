"""The check loop: every checker of every real server on one asyncio loop, in one thread.

Theory of operation
-------------------
keepalived runs its checkers as timer threads of one event loop (lib/scheduler.c); we do the
same with asyncio: one task per checker, no OS thread each, so thousands of real servers cost
thousands of sleeping coroutines.  A task waits a random part of its warmup first (keepalived's
jitter, so that checks do not all fire together), then loops: run the checker bounded by its
connect_timeout, hand the result to its ``Pool`` (ipwrapper.py), sleep for the delay the pool
returns (delay_loop, or delay_before_retry while retrying).

Rule changes (``Pool.checker_result``) run on one more thread, the loop's rules thread, one
at a time: a backend may block or run an event loop of its own (pyroute2), which must not
happen on the check loop.  The loop thread is started once; pools are added and removed from other threads (the
director's main thread on start, reload and stop) through ``run_coroutine_threadsafe``.  A
checker that raises is logged and counted as a failed check, never kills its task.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
from typing import Optional

from lvsuser.check import dns, http, misc, ping, tcp, udp
from lvsuser.check.base import Result, target_for
from lvsuser.check.ipwrapper import Pool

log = logging.getLogger("lvsuser.check")

CHECKERS = {
    "TCP_CHECK": tcp.check,
    "HTTP_GET": http.check,
    "SSL_GET": http.check,
    "MISC_CHECK": misc.check,
    "UDP_CHECK": udp.check,
    "DNS_CHECK": dns.check,
    "PING_CHECK": ping.check,
}


async def run_one(pool: Pool, rs_key: tuple, index: int) -> float:
    """One check of one checker, its result applied; returns the delay to the next."""
    rs = pool.servers[rs_key]
    state = rs.checkers[index]
    config = state.config
    target = target_for(config, rs.config)
    timeout = state.timing.connect_timeout
    started = asyncio.get_running_loop().time()
    try:
        # the checker bounds itself; this outer bound only guards against a checker bug
        result = await asyncio.wait_for(CHECKERS[config.kind](config, target, timeout),
                                        timeout + 5.0)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a checker bug is a failed check, logged, not a dead task
        log.exception("%s on %s raised", config.kind, target)
        result = Result(False, f"checker error: {exc}")
    # rule changes run on the loop's one rules thread: a backend may run an event loop of its
    # own (pyroute2 does) and may block; results are applied one at a time, in order
    loop = asyncio.get_running_loop()
    duration = loop.time() - started
    return await loop.run_in_executor(rules_executor(loop), pool.checker_result, rs_key, index,
                                      result.ok, result.weight, result.reason, duration)


_EXECUTORS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def rules_executor(loop) -> concurrent.futures.ThreadPoolExecutor:
    executor = _EXECUTORS.get(id(loop))
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                         thread_name_prefix="check-rules")
        _EXECUTORS[id(loop)] = executor
    return executor


class CheckLoop:
    """Owns the loop thread and one task per checker."""

    def __init__(self, rng: Optional[random.Random] = None):
        self.loop = asyncio.new_event_loop()
        self.rng = rng or random.Random()
        self._tasks: dict[int, list[asyncio.Task]] = {}  # id(pool) -> its tasks
        self._thread = threading.Thread(target=self._run, name="checks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _checker_task(self, pool: Pool, rs_key: tuple, index: int,
                            first_delay: float) -> None:
        # the flag as well as the cancellation: Python 3.11's wait_for may swallow a cancel
        # that races with the end of what it waits for
        await asyncio.sleep(first_delay)
        checker = pool.servers[rs_key].checkers[index]
        while id(pool) in self._tasks:
            if pool.config.ha_suspend and pool.suspended():
                await asyncio.sleep(checker.timing.delay_loop)  # look again a loop later
                continue
            delay = await run_one(pool, rs_key, index)
            await asyncio.sleep(delay)

    async def _add(self, pool: Pool, keep_warm: bool) -> None:
        tasks = []
        for rs_key, rs in pool.servers.items():
            for index, checker in enumerate(rs.checkers):
                # a checker carried over a reload starts at once-ish; new ones warm up
                warmup = checker.timing.warmup
                first = self.rng.uniform(0, warmup) if warmup > 0 else 0.0
                if keep_warm and checker.has_run:
                    first = self.rng.uniform(0, min(warmup, checker.timing.delay_loop))
                tasks.append(self.loop.create_task(
                    self._checker_task(pool, rs_key, index, first),
                    name=f"check {pool.config.name} {rs_key} {checker.config.kind}"))
        self._tasks[id(pool)] = tasks

    async def _remove(self, pool: Pool) -> None:
        tasks = self._tasks.pop(id(pool), [])
        while tasks:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
            tasks = [task for task in tasks if not task.done()]
        # a result already handed to the rules thread is applied before we return (one
        # worker, first in first out: a no-op queued now runs after it)
        await self.loop.run_in_executor(rules_executor(self.loop), lambda: None)

    def _call(self, coroutine, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def add(self, pool: Pool, keep_warm: bool = False) -> None:
        self._call(self._add(pool, keep_warm))

    def remove(self, pool: Pool) -> None:
        """Stop a pool's checks; when this returns, none of them is running."""
        self._call(self._remove(pool))

    def task_count(self) -> int:
        return sum(len(tasks) for tasks in self._tasks.values())

    def close(self) -> None:
        async def cancel_all():
            tasks = [task for key in list(self._tasks) for task in self._tasks.pop(key)]
            while tasks:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=1.0)
                tasks = [task for task in tasks if not task.done()]

        if self.loop.is_closed():
            return
        try:
            self._call(cancel_all(), timeout=10.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10.0)
            executor = _EXECUTORS.pop(id(self.loop), None)
            if executor is not None:
                executor.shutdown(wait=True)
            if not self._thread.is_alive():
                self.loop.close()
