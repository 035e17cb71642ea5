"""Start, reload and stop a set of virtual servers with their checks (keepalived's check
process, for one director).

On ``start`` every virtual server's services are put in the table and its checks begin.  A
``reload`` applies only the differences, as keepalived does on SIGHUP: a virtual server that is
gone has its services deleted; a new one is started; a kept one keeps the health of the real
servers it still has (their checkers' state carries over) and gets its service parameters
edited in place, so its connections and its healthy servers are not disturbed.  ``close``
stops the checks (and runs omega scripts) but leaves the rules: the director keeps its table
across a restart and the next start adopts it.
"""
from __future__ import annotations

import logging
from typing import Optional

from lvsuser.backends.base import Backend
from lvsuser.check.config import VirtualServerConfig
from lvsuser.check.ipwrapper import Pool, PoolError, run_script, run_script_and_wait
from lvsuser.check.scheduler import CheckLoop

log = logging.getLogger("lvsuser.check")


class HealthChecks:
    def __init__(self, backend: Backend, script_runner=run_script):
        self.backend = backend
        self.script_runner = script_runner
        self.pools: dict[tuple, Pool] = {}
        self.loop: Optional[CheckLoop] = None

    def start(self, configs: list[VirtualServerConfig]) -> None:
        """Raises PoolError (nothing started) if a service cannot be set up."""
        self.loop = CheckLoop()
        for config in configs:
            pool = Pool(config, self.backend, self.script_runner)
            try:
                pool.start()
            except PoolError:
                self.close()
                raise
            self.pools[config.key] = pool
            self.loop.add(pool)
        log.info("health checks: %d virtual servers, %d checkers", len(self.pools),
                 self.loop.task_count())

    def reload(self, configs: list[VirtualServerConfig]) -> None:
        assert self.loop is not None
        new_keys = {config.key for config in configs}
        for key in [k for k in self.pools if k not in new_keys]:
            pool = self.pools.pop(key)
            self.loop.remove(pool)
            log.info("Removing Virtual Server %s", pool.config.name)
            pool.remove()
        for config in configs:
            old = self.pools.get(config.key)
            pool = Pool(config, self.backend, self.script_runner)
            if old is None:
                try:
                    pool.start()
                except PoolError as exc:
                    log.error("%s", exc)
                    continue
                self.pools[config.key] = pool
                self.loop.add(pool)
                continue
            self.loop.remove(old)  # its checks stop before the new pool takes their state
            for service in config.services:
                pool._ensure_service(service)
            pool.adopt(old)
            if old.config.sorry_server is not None and config.sorry_server is None \
                    and old.sorry_alive:
                old._sorry_cmd(False)
                pool.sorry_alive = pool.sorry_set = False
                pool._alive_servers_cmd(True)
            self.pools[config.key] = pool
            self.loop.add(pool, keep_warm=True)
        log.info("health checks reloaded: %d virtual servers, %d checkers", len(self.pools),
                 self.loop.task_count())

    def owned(self) -> frozenset:
        return frozenset(svc.key for pool in list(self.pools.values())
                         for svc in pool.config.services)

    def reapply(self) -> None:
        for pool in list(self.pools.values()):
            pool.reapply()

    def status(self) -> list[dict]:
        """Every real server's health (Pool.status rows), for metrics and status commands."""
        return [row for pool in list(self.pools.values()) for row in pool.status()]

    def close(self) -> None:
        if self.loop is None:
            return
        self.loop.close()
        # the director exits next: omega's scripts run now, each for a bounded time (unless
        # the runner was replaced, as tests do)
        runner = run_script_and_wait if self.script_runner is run_script else None
        for pool in self.pools.values():
            pool.shutdown_notifies(runner)
        self.loop = None
