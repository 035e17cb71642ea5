"""The health-check engine without the network: keepalived's retry epilogue, the per-server
state machine, and ipwrapper's rule changes (inhibit, quorum with hysteresis, sorry server,
notify scripts, dynamic weights, reload) against the in-memory table."""
from __future__ import annotations

import ipaddress

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.check.config import (
    CheckerConfig,
    RealServerConfig,
    Timing,
    VirtualServerConfig,
    resolve,
)
from lvsuser.check.ipwrapper import Pool
from lvsuser.check.realserver import DOWN, UP, CheckerState

VIP = ipaddress.ip_address("198.18.0.1")


def rip(n: int):
    return ipaddress.ip_address(f"198.18.1.{n}")


def timing(retry=1, alpha=False) -> Timing:
    return Timing(delay_loop=6.0, retry=retry, delay_before_retry=2.0, connect_timeout=3.0,
                  warmup=0.0, alpha=alpha)


def service() -> model.Service:
    return model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=80,
                         scheduler="rr")


def vs_config(servers, **extra) -> VirtualServerConfig:
    return VirtualServerConfig(name="198.18.0.1 80", services=[service()],
                               real_servers=servers, delay_loop=6.0, **extra)


def rs(n, weight=1, checkers=1, **extra) -> RealServerConfig:
    return RealServerConfig(addr=rip(n), port=80, weight=weight,
                            checkers=[CheckerConfig("TCP_CHECK", retry=0)
                                      for _ in range(checkers)], **extra)


def table_dests(backend) -> dict:
    svc = backend.get_service(service().key)
    return {} if svc is None else {(str(d.addr), d.port): d.weight for d in svc.dests}


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))


# --- the epilogue ---------------------------------------------------------------------------

def test_retry_then_down_after_retry_plus_one_failures():
    state = CheckerState(CheckerConfig("TCP_CHECK"), timing(retry=2))
    state.has_run = True  # an established, healthy checker
    assert state.epilogue(False) == (2.0, None)  # retry 1, after delay_before_retry
    assert state.epilogue(False) == (2.0, None)  # retry 2
    assert state.epilogue(False) == (6.0, DOWN)  # no retries left: down, back to delay_loop
    assert state.retry_it == 0
    state.is_up = False
    # already down: keepalived still spends its retries, and raises no new event
    assert [state.epilogue(False) for _ in range(3)] == [(2.0, None), (2.0, None), (6.0, None)]
    assert state.epilogue(True) == (6.0, UP)


def test_a_success_resets_the_retry_count():
    state = CheckerState(CheckerConfig("TCP_CHECK"), timing(retry=1))
    state.has_run = True
    assert state.epilogue(False) == (2.0, None)
    assert state.epilogue(True) == (6.0, None)  # up and already up: nothing to do
    assert state.epilogue(False) == (2.0, None)  # the count starts again
    assert state.epilogue(False) == (6.0, DOWN)


def test_defaults_and_inheritance_follow_keepalived():
    vs = vs_config([])
    server = RealServerConfig(addr=rip(1), port=80)
    http = resolve(vs, server, CheckerConfig("HTTP_GET"))
    assert (http.retry, http.delay_before_retry, http.connect_timeout) == (1, 3.0, 5.0)
    assert http.delay_loop == 6.0 and http.warmup == 6.0  # warmup defaults to delay_loop
    tcp = resolve(vs, server, CheckerConfig("TCP_CHECK", connect_timeout=2, warmup=0))
    assert (tcp.delay_before_retry, tcp.connect_timeout, tcp.warmup) == (1.0, 2.0, 0.0)
    misc = resolve(vs, server, CheckerConfig("MISC_CHECK", options={"misc_timeout": 4}))
    assert (misc.retry, misc.connect_timeout) == (0, 4.0)
    server.retry = 5
    assert resolve(vs, server, CheckerConfig("TCP_CHECK")).retry == 5


# --- ipwrapper ------------------------------------------------------------------------------

def test_start_adds_servers_alpha_ones_wait_for_a_success():
    backend = TableBackend()
    config = vs_config([rs(1, weight=3), rs(2, alpha=True)])
    pool = Pool(config, backend, Recorder())
    pool.start()
    assert table_dests(backend) == {("198.18.1.1", 80): 3}
    assert pool.quorum_up
    pool.checker_result((rip(2), 80), 0, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 3, ("198.18.1.2", 80): 1}


def test_failure_removes_success_adds_back_with_notify_arguments():
    backend = TableBackend()
    notify = Recorder()
    server = rs(1, notify_up=["/x/up.sh", "rs1", "up"], notify_down=["/x/down.sh", "rs1"])
    pool = Pool(vs_config([server, rs(2)]), backend, notify)
    pool.start()
    assert pool.checker_result((rip(1), 80), 0, False, reason="refused") == 6.0
    assert table_dests(backend) == {("198.18.1.2", 80): 1}
    assert notify.calls == [["/x/down.sh", "rs1"]]
    pool.checker_result((rip(1), 80), 0, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 1, ("198.18.1.2", 80): 1}
    assert notify.calls[-1] == ["/x/up.sh", "rs1", "up"]


def test_a_server_with_two_checkers_is_up_only_when_both_are():
    backend = TableBackend()
    pool = Pool(vs_config([rs(1, checkers=2)]), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)
    pool.checker_result((rip(1), 80), 1, False)
    assert table_dests(backend) == {}
    pool.checker_result((rip(1), 80), 0, True)
    assert table_dests(backend) == {}  # checker 1 still failed
    pool.checker_result((rip(1), 80), 1, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 1}


def test_inhibit_on_failure_keeps_the_dest_at_weight_zero():
    backend = TableBackend()
    pool = Pool(vs_config([rs(1, weight=5, inhibit_on_failure=True), rs(2)]), backend,
                Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)
    assert table_dests(backend) == {("198.18.1.1", 80): 0, ("198.18.1.2", 80): 1}
    pool.checker_result((rip(1), 80), 0, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 5, ("198.18.1.2", 80): 1}


def test_alpha_inhibited_server_starts_at_weight_zero():
    backend = TableBackend()
    pool = Pool(vs_config([rs(1, weight=4, inhibit_on_failure=True, alpha=True)]), backend,
                Recorder())
    pool.start()
    assert table_dests(backend) == {("198.18.1.1", 80): 0}


def test_quorum_lost_brings_the_sorry_server_and_gained_removes_it():
    backend = TableBackend()
    scripts = Recorder()
    sorry = RealServerConfig(addr=rip(9), port=8080, fwd=model.Forward.MASQ)
    config = vs_config([rs(1, weight=2), rs(2, weight=2), rs(3, weight=2)], quorum=4,
                       hysteresis=1, sorry_server=sorry, quorum_up=["/q/up"],
                       quorum_down=["/q/down", "x"])
    pool = Pool(config, backend, scripts)
    pool.start()
    assert pool.quorum_up and scripts.calls == [["/q/up"]]
    pool.checker_result((rip(1), 80), 0, False)  # 4 left: not under 4 - 1
    assert pool.quorum_up
    pool.checker_result((rip(2), 80), 0, False)  # 2 < 3: lost
    assert not pool.quorum_up
    # the remaining alive server leaves the pool, the sorry server serves
    assert table_dests(backend) == {("198.18.1.9", 8080): 1}
    assert scripts.calls[-1] == ["/q/down", "x"]
    pool.checker_result((rip(1), 80), 0, True)  # 4 < 4 + 1: hysteresis holds quorum down
    assert not pool.quorum_up
    assert table_dests(backend) == {("198.18.1.9", 8080): 1}
    pool.checker_result((rip(2), 80), 0, True)  # 6 >= 5: gained
    assert pool.quorum_up
    assert table_dests(backend) == {(f"198.18.1.{n}", 80): 2 for n in (1, 2, 3)}
    assert scripts.calls[-1] == ["/q/up"]


def test_starting_without_quorum_puts_the_sorry_server_in():
    backend = TableBackend()
    sorry = RealServerConfig(addr=rip(9), port=80)
    pool = Pool(vs_config([rs(1, alpha=True)], sorry_server=sorry), backend, Recorder())
    pool.start()
    assert table_dests(backend) == {("198.18.1.9", 80): 1}
    pool.checker_result((rip(1), 80), 0, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 1}


def test_misc_check_spends_retries_only_while_up():
    state = CheckerState(CheckerConfig("MISC_CHECK"), timing(retry=2))
    state.has_run = True
    assert [state.epilogue(False) for _ in range(3)] == [(2.0, None), (2.0, None), (6.0, DOWN)]
    state.is_up = False
    assert [state.epilogue(False) for _ in range(2)] == [(6.0, None), (6.0, None)]
    assert state.epilogue(True) == (6.0, UP)


def test_dynamic_weight_of_a_server_coming_up_is_its_first_weight():
    backend = TableBackend()
    pool = Pool(vs_config([rs(1, weight=10), rs(2)]), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)
    pool.checker_result((rip(1), 80), 0, True, weight=4)
    assert table_dests(backend) == {("198.18.1.1", 80): 4, ("198.18.1.2", 80): 1}


def test_dynamic_weight_edits_in_place():
    backend = TableBackend()
    pool = Pool(vs_config([rs(1, weight=10)]), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, True, weight=7)
    assert table_dests(backend) == {("198.18.1.1", 80): 7}
    pool.checker_result((rip(1), 80), 0, True, weight=10)
    assert table_dests(backend) == {("198.18.1.1", 80): 10}


def test_a_foreign_service_is_never_touched():
    backend = TableBackend()
    other = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=443)
    backend.add_service(other)
    backend.add_dest(other.key, model.Dest(addr=rip(50), port=443, weight=9))
    pool = Pool(vs_config([rs(1)]), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)
    pool.remove()
    kept = backend.get_service(other.key)
    assert [(str(d.addr), d.weight) for d in kept.dests] == [("198.18.1.50", 9)]
    assert backend.get_service(service().key) is None


def test_start_on_a_saved_table_adopts_and_drops_unknown_dests():
    backend = TableBackend()
    backend.add_service(model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP,
                                      port=80, scheduler="wlc"))
    backend.add_dest(service().key, model.Dest(addr=rip(1), port=80, weight=1))
    backend.add_dest(service().key, model.Dest(addr=rip(7), port=80, weight=1))
    pool = Pool(vs_config([rs(1, weight=3)]), backend, Recorder())
    pool.start()
    assert backend.get_service(service().key).scheduler == "rr"
    assert table_dests(backend) == {("198.18.1.1", 80): 3}


def test_reload_keeps_health_of_kept_servers_and_removes_gone_ones():
    backend = TableBackend()
    old = Pool(vs_config([rs(1), rs(2), rs(3)]), backend, Recorder())
    old.start()
    old.checker_result((rip(2), 80), 0, False)
    assert ("198.18.1.2", 80) not in table_dests(backend)
    new = Pool(vs_config([rs(1, weight=4), rs(2), rs(4, alpha=True)]), backend, Recorder())
    for svc in new.config.services:
        new._ensure_service(svc)
    new.adopt(old)
    # rs1 kept, its new weight applied; rs2 stays failed; rs3 gone; rs4 waits (alpha)
    assert table_dests(backend) == {("198.18.1.1", 80): 4}
    assert not new.servers[(rip(2), 80)].alive
    new.checker_result((rip(2), 80), 0, True)
    assert table_dests(backend) == {("198.18.1.1", 80): 4, ("198.18.1.2", 80): 1}


@pytest.mark.parametrize("retry", [0, 2])
def test_pool_delays_follow_the_epilogue(retry):
    backend = TableBackend()
    server = rs(1)
    server.checkers[0].retry = retry
    pool = Pool(vs_config([server]), backend, Recorder())
    pool.start()
    delays = [pool.checker_result((rip(1), 80), 0, False) for _ in range(retry + 1)]
    assert delays == [1.0] * retry + [6.0]
    assert table_dests(backend) == {}


def test_alpha_first_failure_runs_notify_down_once():
    backend = TableBackend()
    notify = Recorder()
    server = rs(1, alpha=True, notify_down=["/x/down"], notify_up=["/x/up"])
    pool = Pool(vs_config([server]), backend, notify)
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)
    pool.checker_result((rip(1), 80), 0, False)
    assert notify.calls == [["/x/down"]]  # keepalived tells once that it never came up
    pool.checker_result((rip(1), 80), 0, True)
    assert notify.calls == [["/x/down"], ["/x/up"]]


@pytest.mark.parametrize("omega", [False, True])
def test_omega_runs_down_scripts_at_shutdown(omega):
    backend = TableBackend()
    notify = Recorder()
    config = vs_config([rs(1, notify_down=["/x/down", "1"]), rs(2, notify_down=["/x/down", "2"],
                                                                  alpha=True)],
                       omega=omega, quorum_down=["/q/down"])
    pool = Pool(config, backend, notify)
    pool.start()
    notify.calls.clear()
    pool.shutdown_notifies()
    # only alive servers go down; the rules themselves stay for the next start
    assert notify.calls == ([["/x/down", "1"], ["/q/down"]] if omega else [])
    assert table_dests(backend) == {("198.18.1.1", 80): 1}


def test_reload_with_a_higher_quorum_brings_the_sorry_server():
    backend = TableBackend()
    sorry = RealServerConfig(addr=rip(9), port=80)
    old = Pool(vs_config([rs(1), rs(2)], sorry_server=sorry), backend, Recorder())
    old.start()
    assert table_dests(backend) == {("198.18.1.1", 80): 1, ("198.18.1.2", 80): 1}
    new = Pool(vs_config([rs(1), rs(2)], sorry_server=sorry, quorum=3), backend, Recorder())
    new.adopt(old)
    assert not new.quorum_up
    assert table_dests(backend) == {("198.18.1.9", 80): 1}


def test_reapply_after_a_flush_restores_the_pool_as_its_health_says():
    backend = TableBackend()
    sorry = RealServerConfig(addr=rip(9), port=80)
    pool = Pool(vs_config([rs(1, inhibit_on_failure=True, weight=3), rs(2), rs(3)],
                          sorry_server=sorry), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False)  # inhibited: weight 0
    pool.checker_result((rip(3), 80), 0, False)  # removed
    before = table_dests(backend)
    assert before == {("198.18.1.1", 80): 0, ("198.18.1.2", 80): 1}
    backend.flush()
    pool.reapply()
    assert table_dests(backend) == before
    pool.checker_result((rip(2), 80), 0, False)  # quorum lost: the sorry server serves
    before = table_dests(backend)
    assert before == {("198.18.1.1", 80): 0, ("198.18.1.9", 80): 1}
    backend.flush()
    pool.reapply()
    assert table_dests(backend) == before


def test_results_and_transitions_reach_the_metrics_registry():
    """What --metrics exports per real server (lvsuser/ops/health.py) follows the checks."""
    from lvsuser.ops import health

    health.REGISTRY.clear()
    backend = TableBackend()
    pool = Pool(vs_config([rs(1), rs(2)]), backend, Recorder())
    pool.start()
    pool.checker_result((rip(1), 80), 0, False, reason="refused", duration=0.25)
    pool.checker_result((rip(2), 80), 0, True, duration=0.01)
    seen = health.REGISTRY.snapshot()
    down = seen[(service().key, rip(1), 80)]
    assert (down.up, down.checks_failed, down.checks_ok, down.last_duration) == \
        (False, 1, 0, 0.25)
    assert down.checker == "TCP_CHECK"
    up = seen[(service().key, rip(2), 80)]
    assert (up.checks_ok, up.checks_failed) == (1, 0)
    pool.checker_result((rip(1), 80), 0, True)
    assert health.REGISTRY.snapshot()[(service().key, rip(1), 80)].up is True
    pool.remove()
    assert not [k for k in health.REGISTRY.snapshot() if k[0] == service().key]
