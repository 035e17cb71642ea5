"""A keepalived.conf run by the director: its services in the table, its checks on the loop,
SIGHUP reloads (only differences applied), stop leaves the rules for the next start."""
from __future__ import annotations

import logging

from lvsuser.check.ipwrapper import PoolError
from lvsuser.check.manager import HealthChecks
from lvsuser.keepalived.config import load

log = logging.getLogger("lvsuser.keepalived")


class KeepalivedConfError(Exception):
    """The file cannot be used; str() has one line per error (FILE:LINE: error: text)."""


class KeepalivedRunner:
    def __init__(self, path: str, backend):
        self.path = path
        self.checks = HealthChecks(backend)

    def _load(self):
        configuration = load(self.path)
        for message in configuration.messages:
            if message.level != "error":
                (log.warning if message.level == "warning" else log.info)("%s", message)
        if configuration.errors:
            raise KeepalivedConfError("\n".join(str(m) for m in configuration.errors))
        return configuration

    def start(self) -> None:
        configuration = self._load()
        try:
            self.checks.start(configuration.virtual_servers)
        except PoolError as exc:
            raise KeepalivedConfError(str(exc)) from exc
        log.info("running %d virtual servers from %s", len(configuration.virtual_servers),
                 self.path)

    def reload(self) -> bool:
        try:
            configuration = self._load()
        except KeepalivedConfError as exc:
            log.error("reload of %s refused, running configuration kept:\n%s", self.path, exc)
            return False
        self.checks.reload(configuration.virtual_servers)
        log.info("reloaded %s", self.path)
        return True

    def owned(self) -> frozenset:
        """Keys of the services the keepalived.conf manages."""
        return self.checks.owned()

    def reapply(self) -> None:
        """Put the running configuration's rules back after someone flushed the table."""
        self.checks.reapply()

    def close(self) -> None:
        self.checks.close()
