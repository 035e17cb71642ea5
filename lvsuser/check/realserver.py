"""Per-checker and per-real-server health state, as keepalived keeps it (no I/O here).

Theory of operation
-------------------
Every checker of a real server has three bits of state: ``is_up``, ``has_run`` and a retry
counter.  A check result goes through keepalived's epilogue (check_tcp.c and its siblings all
share it):

* success, or a failure with no retries left: the next check is ``delay_loop`` away and the
  retry counter is reset; a success of a checker that was down (or never ran) is an UP event, a
  failure of a checker that was up (or never ran) is a DOWN event;
* a failure with retries left: the next check is ``delay_before_retry`` away, counter + 1.

So a real server is declared failed after ``retry + 1`` consecutive failures.  Events then go
through ``update_svr_checker_state`` (ipwrapper.c): a real server is alive only while none of
its checkers is failed (``num_failed``), so an UP of one checker changes the server only if it
was the last failed one, and a DOWN only if it is the first.  ``alpha`` starts a checker as
failed (the server is out of the pool until its first success); otherwise a checker starts up.
The decisions that touch rules (quorum, sorry server, inhibit) are in ``ipwrapper.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from lvsuser.check.config import CheckerConfig, RealServerConfig, Timing

UP = "up"
DOWN = "down"


@dataclasses.dataclass
class CheckerState:
    config: CheckerConfig
    timing: Timing
    is_up: bool = True
    has_run: bool = False
    retry_it: int = 0
    last_reason: str = ""
    # for observers (metrics): how many checks ran and failed, how long the last one took
    checks: int = 0
    failures: int = 0
    last_duration: float = 0.0

    def epilogue(self, ok: bool) -> tuple[float, Optional[str]]:
        """(seconds until the next check, UP/DOWN event or None) for one result.  MISC_CHECK
        (check_misc.c) spends retries only while it is up: a failed script that keeps failing
        runs every delay_loop."""
        if not ok and not self.is_up and self.has_run and self.config.kind == "MISC_CHECK":
            self.retry_it = 0
            return self.timing.delay_loop, None
        if ok or self.retry_it >= self.timing.retry:
            delay = self.timing.delay_loop
            self.retry_it = 0
            if ok and (not self.is_up or not self.has_run):
                return delay, UP
            if not ok and (self.is_up or not self.has_run):
                return delay, DOWN
            return delay, None
        self.retry_it += 1
        return self.timing.delay_before_retry, None


@dataclasses.dataclass
class RealServerState:
    config: RealServerConfig
    checkers: list[CheckerState]
    alive: bool = False  # counted in the pool (keepalived's ISALIVE)
    set: bool = False  # a dest exists in the table (possibly at weight 0, inhibited)
    weight: int = 0  # effective weight: the configured one, or MISC_CHECK's dynamic one
    num_failed: int = 0

    @classmethod
    def build(cls, config: RealServerConfig, timings: list[Timing]) -> "RealServerState":
        state = cls(config, [CheckerState(c, t) for c, t in zip(config.checkers, timings)],
                    weight=config.weight)
        for checker in state.checkers:
            if checker.timing.alpha:  # alpha: failed until the first success
                checker.is_up = False
                state.num_failed += 1
        return state

    @property
    def inhibit(self) -> bool:
        return self.config.inhibit_on_failure

    def set_checker_state(self, checker: CheckerState, up: bool) -> None:
        if checker.is_up == up:
            return
        checker.is_up = up
        if not up:
            self.num_failed += 1
        elif self.num_failed:
            self.num_failed -= 1

    def checker_event(self, checker: CheckerState, alive: bool) -> tuple[Optional[bool], bool]:
        """keepalived's update_svr_checker_state, split in two: returns (the server's new state
        to perform, or None; whether to run a notify script for a first result that changed
        nothing).  The caller performs the state (ipwrapper), then ``commit``s."""
        if checker.is_up == alive:
            notify = False
            if not checker.has_run:
                notify = checker.timing.alpha or not alive
                checker.has_run = True
            return None, notify
        checker.has_run = True
        if alive and self.num_failed <= 1:
            return True, False
        if not alive and self.num_failed == 0:
            return False, False
        return None, False
