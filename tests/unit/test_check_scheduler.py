"""The check loop: real TCP checks on one thread change the table as servers come and go;
thousands of checkers cost no thread each; warmup spreads first checks; a removed pool's
checks stop."""
from __future__ import annotations

import ipaddress
import random
import threading
import time

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.check.config import CheckerConfig, RealServerConfig, VirtualServerConfig
from lvsuser.check.ipwrapper import Pool
from lvsuser.check.manager import HealthChecks
from lvsuser.check.scheduler import CheckLoop

from .listeners import listen

LOOP = ipaddress.ip_address("127.0.0.1")
VIP = ipaddress.ip_address("198.18.0.1")


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def vs_for(ports, **checker):
    servers = [RealServerConfig(addr=LOOP, port=port, checkers=[CheckerConfig(
        "TCP_CHECK", **{"retry": 0, "warmup": 0, "delay_loop": 0.1, "connect_timeout": 0.5,
                        **checker})]) for port in ports]
    service = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=80)
    return VirtualServerConfig(name="198.18.0.1 80", services=[service],
                               real_servers=servers, delay_loop=0.1)


def ports_in_table(backend):
    svc = backend.get_service(model.ServiceKey(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                                               addr=VIP, port=80))
    return set() if svc is None else {d.port for d in svc.dests}


def dests_in_table(backend):
    svc = backend.get_service(model.ServiceKey(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                                               addr=VIP, port=80))
    return [] if svc is None else svc.dests


def test_servers_leave_and_come_back_with_their_checks():
    up, down = listen(), listen()
    ports = [up.getsockname()[1], down.getsockname()[1]]
    backend = TableBackend()
    checks = HealthChecks(backend, script_runner=lambda argv: None)
    try:
        checks.start([vs_for(ports)])
        assert ports_in_table(backend) == set(ports)
        down.close()
        assert wait_for(lambda: ports_in_table(backend) == {ports[0]})
        rows = {row["port"]: row for row in checks.status()}
        assert rows[ports[0]]["alive"] and not rows[ports[1]]["alive"]
        failed = rows[ports[1]]["checkers"][0]
        assert failed["failures"] >= 1 and failed["last_reason"] == "Connection refused"
        assert rows[ports[0]]["checkers"][0]["failures"] == 0
        assert rows[ports[0]]["checkers"][0]["checks"] >= 1
        again = listen(ports[1])
        try:
            assert wait_for(lambda: ports_in_table(backend) == set(ports))
        finally:
            again.close()
    finally:
        checks.close()
        up.close()


def test_a_thousand_checkers_share_one_thread():
    sock = listen()
    port = sock.getsockname()[1]
    loop = CheckLoop(rng=random.Random(1))
    before = threading.active_count() - 1  # the loop's thread
    try:
        backend = TableBackend()
        # 1000 distinct real servers: 127.0.0.1 ports are few, so use connect_ip/port
        servers = []
        for n in range(1000):
            addr = ipaddress.ip_address(f"198.18.{2 + n // 250}.{1 + n % 250}")
            servers.append(RealServerConfig(addr=addr, port=80, checkers=[CheckerConfig(
                "TCP_CHECK", retry=0, warmup=0.5, delay_loop=0.2, connect_timeout=1,
                connect_ip="127.0.0.1", connect_port=port)]))
        service = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=80)
        pool = Pool(VirtualServerConfig("vs", [service], servers, delay_loop=0.2), backend,
                    lambda argv: None)
        pool.start()
        loop.add(pool)
        assert loop.task_count() == 1000
        assert wait_for(lambda: any(c.has_run for rs in pool.servers.values()
                                    for c in rs.checkers))
        # the loop and its rules thread: two threads for a thousand checkers
        assert threading.active_count() == before + 2
        assert wait_for(lambda: all(c.has_run for rs in pool.servers.values()
                                    for c in rs.checkers), timeout=15)
        assert len(dests_in_table(backend)) == 1000 and pool.alive_weight() == 1000
        loop.remove(pool)
        assert loop.task_count() == 0
    finally:
        loop.close()
        sock.close()
    assert wait_for(lambda: threading.active_count() == before)


def test_warmup_spreads_the_first_checks():
    rng = random.Random(7)
    loop = CheckLoop(rng=rng)
    first_runs = []
    sock = listen()
    port = sock.getsockname()[1]
    try:
        backend = TableBackend()
        pool = Pool(vs_for([port] * 1, warmup=1.0, delay_loop=30), backend, lambda argv: None)
        # record when each checker first reports
        original = pool.checker_result

        def record(*args, **kwargs):
            first_runs.append(time.monotonic())
            return original(*args, **kwargs)

        pool.checker_result = record
        pools = []
        started = time.monotonic()
        for _ in range(20):
            p = Pool(vs_for([port], warmup=1.0, delay_loop=30), backend, lambda argv: None)
            p.checker_result = record
            loop.add(p)
            pools.append(p)
        assert wait_for(lambda: len(first_runs) == 20, timeout=5)
        offsets = sorted(t - started for t in first_runs)
        # spread over the warmup second, not all at once
        assert offsets[-1] - offsets[0] > 0.3 and offsets[-1] < 2.0
    finally:
        loop.close()
        sock.close()


def test_a_removed_pool_makes_no_more_changes():
    sock = listen()
    port = sock.getsockname()[1]
    loop = CheckLoop()
    try:
        backend = TableBackend()
        pool = Pool(vs_for([port]), backend, lambda argv: None)
        pool.start()
        loop.add(pool)
        assert wait_for(lambda: pool.servers[(LOOP, port)].checkers[0].has_run)
        loop.remove(pool)
        sock.close()
        time.sleep(0.4)  # several delay_loops: a live check would have removed it
        assert ports_in_table(backend) == {port}
    finally:
        loop.close()


def test_ha_suspend_pauses_checks_while_the_vip_is_elsewhere():
    sock = listen()
    port = sock.getsockname()[1]
    backend = TableBackend()
    loop = CheckLoop()
    try:
        pools = {}
        for vip in ("127.0.0.1", "198.18.0.77"):  # on this host / not on it
            config = vs_for([port])
            service = config.services[0]
            service.addr = ipaddress.ip_address(vip)
            config.ha_suspend = True
            pool = Pool(config, backend, lambda argv: None)
            loop.add(pool)
            pools[vip] = pool
        assert not pools["127.0.0.1"].suspended() and pools["198.18.0.77"].suspended()
        here = pools["127.0.0.1"].servers[(LOOP, port)].checkers[0]
        away = pools["198.18.0.77"].servers[(LOOP, port)].checkers[0]
        assert wait_for(lambda: here.checks >= 3)
        assert away.checks == 0
    finally:
        loop.close()
        sock.close()
