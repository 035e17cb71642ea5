"""The one place where health-check results become rule changes (keepalived's ipwrapper.c).

Theory of operation
-------------------
A ``Pool`` is one virtual server of the configuration: one service, or the services of a
virtual_server_group, all with the same real servers.  It owns those services and nothing
else: every change it makes goes through the backend's own delta operations (add_dest,
edit_dest, del_dest), so the datapath changes one dest in place and keeps its connections.

The decisions are keepalived's:

* A real server going up is added (weight = its effective weight); going down it is deleted --
  or, with ``inhibit_on_failure``, kept at weight 0 so its established connections carry on.
  ``_dest_cmd`` is keepalived's ipvs_cmd: ADD of an inhibited dest that is still in the table is
  an edit, DEL of one is an edit to weight 0.
* Quorum: the sum of the weights of the alive real servers.  Gained when the sum reaches
  ``quorum + hysteresis`` (from down), lost when it falls under ``quorum - hysteresis`` (from up)
  or to 0.  Losing it runs quorum_down and, if there is a sorry server, removes the alive real
  servers and adds the sorry server; gaining it runs quorum_up and does the reverse.  While the
  sorry server serves, a real server changing state only changes its bookkeeping.
* notify_up / notify_down run with exactly the arguments written in the configuration (as
  keepalived's notify_exec), in the background: a slow script never holds a check back.
* ``alpha`` servers start out of the pool; ``omega`` runs notify_down/quorum_down at shutdown.

Every rule change and every transition is logged at INFO (journald shows them).
"""
from __future__ import annotations

import errno
import logging
import socket
import subprocess
import threading
from typing import Callable, Optional

from lvsuser.backends.base import Backend
from lvsuser.check.config import RealServerConfig, VirtualServerConfig, resolve
from lvsuser.check.realserver import CheckerState, RealServerState
from lvsuser.model import IPVSError, Service
from lvsuser.ops import health

log = logging.getLogger("lvsuser.check")

SCRIPT_TIMEOUT = 30.0


def run_script(argv: list[str]) -> None:
    """Start a notify script without waiting for it; its end is reaped by a small thread."""
    def reap() -> None:
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=SCRIPT_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("notify script %s failed: %s", " ".join(argv), exc)

    threading.Thread(target=reap, name="notify", daemon=True).start()


SHUTDOWN_SCRIPT_TIMEOUT = 1.0  # keepalived gives omega's scripts a second at shutdown


def run_script_and_wait(argv: list[str]) -> None:
    """For shutdown (omega): the director is about to exit, so wait -- a bounded time."""
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=SHUTDOWN_SCRIPT_TIMEOUT,
                       check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("notify script %s failed: %s", " ".join(argv), exc)


def format_rs(rs: RealServerConfig) -> str:
    if rs.addr.version == 6:
        return f"[{rs.addr}]:{rs.port}"
    return f"{rs.addr}:{rs.port}"


class PoolError(Exception):
    """A virtual server's service cannot be put in the table; str() says which and why."""


class Pool:
    """One virtual server's real servers, their health and the rules that follow from it."""

    def __init__(self, config: VirtualServerConfig, backend: Backend,
                 script_runner: Callable[[list[str]], None] = run_script):
        self.config = config
        self.backend = backend
        self.run_script = script_runner
        self.lock = threading.RLock()  # checks arrive on the loop thread, reloads on the main one
        self.servers: dict[tuple, RealServerState] = {}
        for rs in config.real_servers:
            timings = [resolve(config, rs, c) for c in rs.checkers]
            self.servers[rs.key] = RealServerState.build(rs, timings)
        self.quorum_up = False
        self.sorry_alive = False
        self.sorry_set = False

    # --- the table ------------------------------------------------------------------------
    def _dest_cmd(self, add: bool, rs: RealServerState) -> None:
        """keepalived's ipvs_cmd(ADD_DEST / DEL_DEST) for every service of the virtual server."""
        if add:
            weight = rs.weight
            op = "edit" if rs.set else "add"
        elif rs.inhibit:
            weight, op = 0, "edit"
        else:
            weight, op = rs.weight, "del"
        for service in self.config.services:
            dest = rs.config.dest(weight)  # its own family (a tunnel may cross)
            self._apply(op, service, dest)
        rs.set = add or rs.inhibit

    def _apply(self, op: str, service: Service, dest) -> None:
        """One delta; an add that meets the dest (a restart found it) edits it, a delete of a
        dest already gone is done."""
        key = service.key
        try:
            if op == "add":
                try:
                    self.backend.add_dest(key, dest)
                except IPVSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                    self.backend.edit_dest(key, dest)
            elif op == "edit":
                try:
                    self.backend.edit_dest(key, dest)
                except IPVSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    self.backend.add_dest(key, dest)
            else:
                try:
                    self.backend.del_dest(key, dest)
                except IPVSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        except IPVSError as exc:
            log.error("%s dest %s:%s of VS %s refused: %s", op, dest.addr, dest.port,
                      self.config.name, exc.message or exc)
            return
        log.info("rule: %s dest %s:%s weight %d in VS %s", op, dest.addr, dest.port,
                 dest.weight, self.config.name)

    def _sorry_cmd(self, add: bool) -> None:
        sorry = self.config.sorry_server
        if sorry is None:
            return
        for service in self.config.services:
            dest = sorry.dest()
            if add:
                self._apply("edit" if self.sorry_set else "add", service, dest)
            elif sorry.inhibit_on_failure:
                dest.weight = 0
                self._apply("edit", service, dest)
            else:
                self._apply("del", service, dest)
        self.sorry_set = add or sorry.inhibit_on_failure
        self.sorry_alive = add

    # --- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Put the services and the real servers that start alive in the table (init_services):
        without alpha a server starts in the pool, with alpha it waits for a success."""
        with self.lock:
            for service in self.config.services:
                try:
                    self._ensure_service(service)
                except IPVSError as exc:
                    raise PoolError(f"{self.config.where}: virtual_server {self.config.name} "
                                    f"cannot be set up: {exc.message or exc}") from exc
            for rs in self.servers.values():
                if rs.num_failed == 0 and not rs.alive:
                    self._dest_cmd(True, rs)
                    rs.alive = True
                elif rs.inhibit and not rs.set:
                    self._dest_cmd(False, rs)
                elif rs.num_failed and not rs.inhibit:
                    self._dest_cmd(False, rs)  # a restart may have found it in the table
            self._update_quorum(init=True)
            sorry = self.config.sorry_server
            if sorry is not None and sorry.inhibit_on_failure and not self.sorry_set:
                self._sorry_cmd(False)

    def _ensure_service(self, service: Service) -> None:
        """Add the service, or make a found one (saved table) match, dropping dests that the
        configuration does not name: the service is ours."""
        current = self.backend.get_service(service.key)
        if current is None:
            self.backend.add_service(service)
            log.info("rule: add service VS %s (%s)", self.config.name, service.scheduler)
            return
        if (current.scheduler, current.flags, current.timeout, current.netmask) != \
                (service.scheduler, service.flags, service.timeout, service.netmask):
            self.backend.edit_service(service)
            log.info("rule: edit service VS %s (%s)", self.config.name, service.scheduler)
        known = set(self.servers)
        if self.config.sorry_server is not None:
            known.add(self.config.sorry_server.key)
        for dest in current.dests:
            if (dest.addr, dest.port) not in known:
                self._apply("del", service, dest)

    def reapply(self) -> None:
        """Make the table say again what this pool's state says (after a flush by someone
        else, e.g. a --rules reload): services, the servers in it (or inhibited at weight 0),
        the sorry server."""
        with self.lock:
            for service in self.config.services:
                self._ensure_service(service)
            serving = self.quorum_up or self.config.sorry_server is None or not self.sorry_alive
            for rs in self.servers.values():
                if rs.set:
                    self._dest_cmd(rs.alive and serving, rs)
            if self.sorry_set:
                self._sorry_cmd(self.sorry_alive)

    def remove(self) -> None:
        """The virtual server left the configuration: its services go (with omega, the scripts
        run as at shutdown)."""
        with self.lock:
            self.shutdown_notifies()
            for service in self.config.services:
                health.forget_real_server(service.key)
                try:
                    self.backend.del_service(service.key)
                    log.info("rule: delete service VS %s", self.config.name)
                except IPVSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ESRCH):
                        log.error("delete service VS %s refused: %s", self.config.name, exc)

    def shutdown_notifies(self, runner: Optional[Callable[[list[str]], None]] = None) -> None:
        """omega: the alive servers' notify_down and the quorum_down script, as at a loss."""
        if not self.config.omega:
            return
        runner = runner or self.run_script
        for rs in self.servers.values():
            if rs.alive and rs.config.notify_down:
                runner(rs.config.notify_down)
        if self.quorum_up and self.config.quorum_down:
            runner(self.config.quorum_down)

    # --- results -------------------------------------------------------------------------
    def checker_result(self, rs_key: tuple, index: int, ok: bool,
                       weight: Optional[int] = None, reason: str = "",
                       duration: float = 0.0) -> float:
        """One check's outcome; returns the delay before that checker runs again."""
        with self.lock:
            rs = self.servers[rs_key]
            checker = rs.checkers[index]
            checker.last_reason = reason
            checker.checks += 1
            checker.failures += 0 if ok else 1
            checker.last_duration = duration
            for service in self.config.services:   # what --metrics exports per real server
                health.observe_health_check(service.key, rs.config.addr, rs.config.port, ok=ok,
                                            duration=duration, checker=checker.config.kind)
            # a dynamic weight first (check_misc.c): a server coming up comes with it
            if ok and weight is not None:
                if rs.alive:
                    self.update_weight(rs, weight)
                else:
                    rs.weight = weight
            delay, event = checker.epilogue(ok)
            if not ok and event is None and checker.retry_it:
                (log.info if checker.is_up else log.debug)("%s on %s failed (%s), retry %d of %d in %.3gs", checker.config.kind,
                         format_rs(rs.config), reason, checker.retry_it, checker.timing.retry,
                         delay)
            if event is not None:
                if ok:
                    log.info("%s on %s succeeded", checker.config.kind, format_rs(rs.config))
                else:
                    log.info("%s on %s failed (%s)%s", checker.config.kind, format_rs(rs.config),
                             reason, f" after {checker.timing.retry} retries"
                             if checker.timing.retry and checker.has_run else "")
                self._checker_event(rs, checker, ok)
            return delay

    def _checker_event(self, rs: RealServerState, checker: CheckerState, alive: bool) -> None:
        perform, notify = rs.checker_event(checker, alive)
        if notify:
            self._notify_rs(rs, alive)
        if perform is not None:
            self.perform_svr_state(rs, perform)
        rs.set_checker_state(checker, alive)

    def _notify_rs(self, rs: RealServerState, alive: bool) -> None:
        script = rs.config.notify_up if alive else rs.config.notify_down
        if script:
            log.info("running notify_%s for %s: %s", "up" if alive else "down",
                     format_rs(rs.config), " ".join(script))
            self.run_script(script)

    def perform_svr_state(self, rs: RealServerState, alive: bool) -> None:
        if rs.alive == alive:
            return
        verb = ("Enabling" if alive else "Disabling") if rs.inhibit else \
            ("Adding" if alive else "Removing")
        log.info("%s service %s %s VS %s", verb, format_rs(rs.config),
                 "of" if rs.inhibit else ("to" if alive else "from"), self.config.name)
        # while the sorry server serves (quorum lost), the pool's rules stay as they are
        if self.quorum_up or self.config.sorry_server is None or not self.sorry_alive:
            self._dest_cmd(alive, rs)
        rs.alive = alive
        for service in self.config.services:
            health.set_real_server_health(service.key, rs.config.addr, rs.config.port, up=alive,
                                          checker="+".join(c.config.kind for c in rs.checkers))
        self._notify_rs(rs, alive)
        self._update_quorum(init=False)

    def update_weight(self, rs: RealServerState, weight: int) -> None:
        """MISC_CHECK's dynamic weight (update_svr_wgt)."""
        if weight == rs.weight:
            return
        log.info("Changing weight from %d to %d for service %s of VS %s", rs.weight, weight,
                 format_rs(rs.config), self.config.name)
        rs.weight = weight
        if rs.set and rs.alive and (self.quorum_up or self.config.sorry_server is None
                                    or not self.sorry_alive):
            self._dest_cmd(True, rs)
        self._update_quorum(init=False)

    def suspended(self) -> bool:
        """ha_suspend: while none of the virtual server's addresses is on this host (the VRRP
        backup's case) its checks are suspended, as keepalived's are.  An address is ours if a
        socket can be bound to it."""
        if not self.config.ha_suspend:
            return False
        addresses = [s.addr for s in self.config.services if s.addr is not None]
        if not addresses:
            return False  # fwmark services: nothing to look at, as in keepalived
        for address in addresses:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((str(address), 0))
                    return False
                except OSError:
                    continue
        return True

    def status(self) -> list[dict]:
        """One row per real server: what a metrics exporter or a status command shows."""
        with self.lock:
            rows = []
            for rs in self.servers.values():
                rows.append({
                    "virtual_server": self.config.name,
                    "services": [s.key for s in self.config.services],
                    "address": str(rs.config.addr), "port": rs.config.port,
                    "alive": rs.alive, "in_table": rs.set, "weight": rs.weight,
                    "quorum_up": self.quorum_up, "sorry_server_active": self.sorry_alive,
                    "checkers": [{"kind": c.config.kind, "up": c.is_up, "checks": c.checks,
                                  "failures": c.failures, "last_duration": c.last_duration,
                                  "last_reason": c.last_reason} for c in rs.checkers],
                })
            return rows

    # --- quorum --------------------------------------------------------------------------
    def alive_weight(self) -> int:
        return sum(rs.weight for rs in self.servers.values() if rs.alive)

    def _update_quorum(self, init: bool) -> None:
        total = self.alive_weight()
        quorum, hysteresis = self.config.quorum, self.config.hysteresis
        threshold = quorum - hysteresis if self.quorum_up else quorum + hysteresis
        if not self.quorum_up and total >= threshold:
            self.quorum_up = True
            log.info("Gained quorum %d+%d=%d <= %d for VS %s", quorum, hysteresis, threshold,
                     total, self.config.name)
            if self.config.sorry_server is not None and self.sorry_alive:
                log.info("Removing sorry server %s from VS %s",
                         format_rs(self.config.sorry_server), self.config.name)
                self._sorry_cmd(False)
                self._alive_servers_cmd(True)
            if self.config.quorum_up:
                self.run_script(self.config.quorum_up)
            return
        if (self.quorum_up and (not total or total < threshold)) or \
                (init and not self.quorum_up and self.config.sorry_server is not None
                 and not self.sorry_alive):
            self.quorum_up = False
            log.info("%s %d-%d=%d > %d for VS %s",
                     "Starting with quorum down" if init else "Lost quorum", quorum,
                     hysteresis, threshold, total, self.config.name)
            if self.config.sorry_server is not None and not self.sorry_alive:
                log.info("Adding sorry server %s to VS %s",
                         format_rs(self.config.sorry_server), self.config.name)
                self._alive_servers_cmd(False)
                self._sorry_cmd(True)
            if self.config.quorum_down:
                self.run_script(self.config.quorum_down)

    def _alive_servers_cmd(self, add: bool) -> None:
        log.info("%s the pool for VS %s", "Adding alive servers to" if add else
                 "Removing alive servers from", self.config.name)
        for rs in self.servers.values():
            if rs.alive:
                self._dest_cmd(add, rs)

    # --- reload --------------------------------------------------------------------------
    def adopt(self, old: "Pool") -> None:
        """Carry the health of servers kept across a reload (keepalived's clear_diff_rs and
        migrate_checkers): a kept checker keeps its state, a server gone is removed."""
        with self.lock, old.lock:
            self.quorum_up = old.quorum_up
            self.sorry_alive = old.sorry_alive
            self.sorry_set = old.sorry_set
            for key, old_rs in old.servers.items():
                new_rs = self.servers.get(key)
                if new_rs is None:
                    log.info("service %s no longer exists in VS %s", format_rs(old_rs.config),
                             self.config.name)
                    if old_rs.set:
                        old_rs.config.inhibit_on_failure = False  # forced removal
                        self._dest_cmd(False, old_rs)
                    continue
                new_rs.alive, new_rs.set = old_rs.alive, old_rs.set
                old_checkers = {c.config.identity(): c for c in old_rs.checkers}
                new_rs.num_failed = 0
                for checker in new_rs.checkers:
                    previous = old_checkers.get(checker.config.identity())
                    if previous is not None:
                        checker.is_up, checker.has_run = previous.is_up, previous.has_run
                        checker.retry_it = min(previous.retry_it, checker.timing.retry)
                    if not checker.is_up:
                        new_rs.num_failed += 1
                # a weight or method change of a server in the pool is applied in place
                if new_rs.set and new_rs.alive and new_rs.config.dest() != old_rs.config.dest():
                    self._dest_cmd(True, new_rs)
                if not new_rs.num_failed and not new_rs.alive:
                    self.perform_svr_state(new_rs, True)
            # servers new in the configuration start as at start-up (init_service_rs)
            for key, new_rs in self.servers.items():
                if key in old.servers:
                    continue
                if new_rs.num_failed == 0:
                    self.perform_svr_state(new_rs, True)
                elif new_rs.inhibit:
                    self._dest_cmd(False, new_rs)
            # quorum settings may have changed (init_service_vs after a reload)
            self._update_quorum(init=True)
