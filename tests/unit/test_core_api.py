"""The core's API beyond single packets: the nogil batch entry, the table layout, publishing
while batches run, flat lookups, plugin failures, bad configuration."""
from __future__ import annotations

import ipaddress
import logging
import threading
import time

import pytest
from scapy.all import IP, UDP, Ether, raw

from lvsuser import _fastpath as compiled
from lvsuser import model
from lvsuser.schedulers import base as sched_base
from lvsuser.fastpath.config import CoreConfig, DestRoute
from lvsuser.pyfastpath import DROP, REPLY, TX
from tests.unit.golden import (ADDRS, CLIENT_MAC, CORE_IDS, CORES, DIR_CLIENT_MAC, IF_CLIENT,
                               make_config, make_service, new_core)

V4 = model.AF_INET


def udp_frame(sport, client=None):
    a = ADDRS[V4]
    return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
               / IP(src=client or a["client"], dst=a["vip"]) / UDP(sport=sport, dport=80) / b"q")


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_batch_entry_matches_single_frames(core_cls):
    cfg = make_config([make_service(protocol=model.IPPROTO_UDP, fwd=model.Forward.TUNNEL, ndests=2)])
    frames = [(udp_frame(1000 + i), IF_CLIENT) for i in range(50)] + [(b"\x00" * 5, IF_CLIENT)]
    one = new_core(core_cls, cfg)
    many = new_core(core_cls, cfg)
    singles = [one.process(f, i, 5.0) for f, i in frames]
    assert many.process_batch(frames, 5.0) == singles
    assert singles[0][0] == TX and singles[-1][0] == DROP
    assert one.counters() == many.counters()


def test_connection_entry_is_40_bytes():
    assert compiled.Core.conn_entry_size() == 40


def test_publish_while_batches_run():
    """Control publishes from one thread while another runs batches without the GIL."""
    svc = make_service(protocol=model.IPPROTO_UDP, fwd=model.Forward.MASQ, ndests=2)
    core = new_core(compiled.Core, make_config([svc]), max_conns=4096)
    errors = []

    frames = _many_udp_frames(60 * 64)
    stop = threading.Event()

    def traffic():
        try:
            round_ = 0
            while not stop.is_set() and round_ < 200_000:   # bounded
                chunk = round_ % 60
                core.process_batch(frames[chunk * 64:(chunk + 1) * 64], float(round_ // 60))
                round_ += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        for flip in range(20):
            variant = make_service(protocol=model.IPPROTO_UDP, fwd=model.Forward.MASQ, ndests=2)
            if flip % 2:
                del variant.dests[0]
            core.publish(make_config([variant]))
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    for dest in core.services()[0].dests:
        assert 0 <= dest.inactconns <= 4096 and dest.activeconns == 0
    total = sum(d.inactconns for d in core.services()[0].dests)
    assert total == core.conn_count()


def _many_udp_frames(count):
    """`count` distinct client flows, made by patching the UDP source port of a few templates
    (the core does not verify L4 checksums, and the IP header stays untouched)."""
    templates = [bytearray(udp_frame(1, f"198.18.0.{i + 1}")) for i in range(count // 60000 + 1)]
    frames = []
    for i in range(count):
        frame = bytearray(templates[i // 60000])
        frame[34:36] = (1 + i % 60000).to_bytes(2, "big")
        frames.append((bytes(frame), IF_CLIENT))
    return frames


def test_lookups_stay_flat_as_the_table_grows():
    """Per-packet cost with 200,000 connections is within a small factor of 1,000."""
    def cost(n_conns):
        core = new_core(compiled.Core, make_config([make_service(
            protocol=model.IPPROTO_UDP, fwd=model.Forward.ROUTE)]), max_conns=n_conns + 10)
        frames = _many_udp_frames(n_conns)
        for start in range(0, n_conns, 4096):
            core.process_batch(frames[start:start + 4096], 1.0)
        assert core.conn_count() == n_conns
        probe = frames[::n_conns // 1000][:1000]   # existing connections spread over the table
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            core.process_batch(probe, 2.0)
            best = min(best, time.perf_counter() - t0)
        return best

    small, large = cost(1000), cost(200_000)
    assert large < small * 4, (small, large)


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_a_failing_plugin_costs_only_new_connections(core_cls, caplog, monkeypatch):
    class Broken:
        def __init__(self, service):
            self.service = service

        def update(self):
            pass

        def schedule(self, pkt, now):
            raise RuntimeError("plugin bug")

    core = core_cls(scheduler_factory=lambda name, svc: Broken(svc))
    core.publish(make_config([make_service(protocol=model.IPPROTO_UDP, scheduler="broken")]))
    monkeypatch.setattr(sched_base, "_error_log_state", {})
    with caplog.at_level(logging.WARNING, logger="lvsuser.scheduler"):
        verdict, out, ifindex = core.process(udp_frame(5), IF_CLIENT, 1.0)
        assert verdict == REPLY and ifindex == IF_CLIENT   # ICMP port unreachable, as ip_vs_leave
        for port in range(6, 10):   # more failures within the interval: counted, not logged
            core.process(udp_frame(port), IF_CLIENT, 1.0)
    counters = core.counters()
    assert counters["no_dest"] == 5 and counters["scheduler_error"] == 5
    messages = [r.getMessage() for r in caplog.records if r.name == "lvsuser.scheduler"]
    assert messages == ["scheduler Broken of UDP 198.18.0.100:80 raised RuntimeError: plugin bug; "
                        "the connection got no real server"]
    # after the interval the next failure is logged again, with what was not logged meanwhile
    state = sched_base._error_log_state
    for entry in state.values():
        entry[0] -= sched_base.SCHEDULE_ERROR_LOG_INTERVAL
    with caplog.at_level(logging.WARNING, logger="lvsuser.scheduler"):
        core.process(udp_frame(11), IF_CLIENT, 1.0)
    last = [r.getMessage() for r in caplog.records if r.name == "lvsuser.scheduler"][-1]
    assert last.endswith("(4 more failures since the last report)")


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
@pytest.mark.parametrize("mutate", [
    lambda c: setattr(c, "mode", "l4"),
    lambda c: c.routes.update({ipaddress.ip_address("198.18.1.11"): DestRoute(ifindex=3, src_mac=b"1")}),
    lambda c: setattr(c.timeouts, "udp", 0),
    lambda c: c.services.append(c.services[0]),
    lambda c: setattr(c.services[0].dests[0], "weight", -1),
    lambda c: c.local_macs.update({5: b"\x00"}),
])
def test_bad_config_raises_and_keeps_the_running_one(core_cls, mutate):
    core = new_core(core_cls, make_config([make_service(protocol=model.IPPROTO_UDP)]))
    bad = make_config([make_service(protocol=model.IPPROTO_UDP)])
    mutate(bad)
    with pytest.raises(ValueError):
        core.publish(bad)
    assert core.process(udp_frame(9), IF_CLIENT, 1.0)[0] == TX


def test_config_defaults_validate():
    CoreConfig().validate()


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_icmp_errors_are_rate_limited_like_the_kernel(core_cls):
    """icmp_global_allow: a burst of 50, then 1 per ms; PMTU messages are never limited."""
    core = new_core(core_cls, make_config([make_service(protocol=model.IPPROTO_UDP)], mtu=576))
    a = ADDRS[V4]
    dying = raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC) / IP(src=a["client"], dst=a["vip"], ttl=1)
                / UDP(sport=7, dport=80))
    verdicts = [core.process(dying, IF_CLIENT, 100.0)[0] for _ in range(60)]
    assert verdicts == [REPLY] * 50 + [DROP] * 10
    assert core.counters()["icmp_ratelimited"] == 10
    big = raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC) / IP(src=a["client"], dst=a["vip"], flags="DF")
              / UDP(sport=8, dport=80) / (b"b" * 1000))
    assert all(core.process(big, IF_CLIENT, 100.0)[0] == REPLY for _ in range(60))
    assert core.process(dying, IF_CLIENT, 100.030)[0] == REPLY  # refilled after 30 ms


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_one_packet_scheduling_keeps_no_connection(core_cls):
    svc = make_service(protocol=model.IPPROTO_UDP, ndests=2,
                       flags=model.SVC_F_HASHED | model.SVC_F_ONEPACKET)
    core = new_core(core_cls, make_config([svc]))
    for _ in range(3):
        assert core.process(udp_frame(53), IF_CLIENT, 1.0)[0] == TX
    assert core.connections(1.0) == []
    assert core.counters()["one_packet"] == 3
    stats = core.services()[0]
    assert stats.stats.conns == 3 and stats.dests[0].inactconns == 0


def test_the_compiled_core_shares_constants_not_the_python_twin():
    """Both cores take their shared names from fastpath/constants.py; importing the compiled
    core does not import pyfastpath."""
    import subprocess
    import sys
    code = ("import sys, lvsuser._fastpath as c; from lvsuser.fastpath import constants as k; "
            "assert 'lvsuser.pyfastpath' not in sys.modules, 'pyfastpath imported'; "
            "assert c.COUNTER_NAMES is k.COUNTER_NAMES")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from lvsuser import pyfastpath
    from lvsuser.fastpath import constants
    assert pyfastpath.COUNTER_NAMES is constants.COUNTER_NAMES
    assert pyfastpath.TCP_STATE_NAMES is constants.TCP_STATE_NAMES
    assert pyfastpath.EXPIRE_MAX_FREED == constants.EXPIRE_MAX_FREED
