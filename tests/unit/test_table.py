"""TableBackend: the kernel's errno for each refusal, edits, ordering, atomicity, hooks."""
import contextlib
import errno
import ipaddress
import threading

import pytest

from lvsuser import model
from lvsuser.backends.base import BatchFailed
from lvsuser.backends.table import TableBackend
from lvsuser.model import Dest, Forward, IPVSError, MarkRule, Service, Timeouts

VIP = ipaddress.ip_address("198.18.0.10")
RIP1 = ipaddress.ip_address("198.18.1.1")
RIP2 = ipaddress.ip_address("198.18.1.2")


def tcp_service(port=80, **kw):
    return Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=port, **kw)


def dest(addr=RIP1, port=80, **kw):
    return Dest(addr=addr, port=port, **kw)


@contextlib.contextmanager
def raises_errno(code):
    with pytest.raises(IPVSError) as info:
        yield
    assert info.value.errno == code, (info.value.errno, code)


@pytest.fixture
def table():
    return TableBackend()


def test_duplicate_service_is_eexist_even_with_a_bad_scheduler(table):
    table.add_service(tcp_service(scheduler="rr"))
    with raises_errno(errno.EEXIST):
        table.add_service(tcp_service(scheduler="nosuch"))


def test_unknown_scheduler_and_persistence_engine_are_enoent(table):
    with raises_errno(errno.ENOENT):
        table.add_service(tcp_service(scheduler="roundrobin"))
    with raises_errno(errno.ENOENT):
        table.add_service(tcp_service(pe_name="nosuch"))
    assert table.get_services() == []


def test_missing_service_is_esrch_for_every_operation(table):
    key = tcp_service().key
    for call in (lambda: table.edit_service(tcp_service()), lambda: table.del_service(key),
                 lambda: table.zero(key), lambda: table.add_dest(key, dest()),
                 lambda: table.edit_dest(key, dest()), lambda: table.del_dest(key, dest())):
        with raises_errno(errno.ESRCH):
            call()


def test_dest_errors(table):
    svc = tcp_service()
    table.add_service(svc)
    table.add_dest(svc.key, dest())
    with raises_errno(errno.EEXIST):
        table.add_dest(svc.key, dest(fwd=Forward.MASQ, weight=5))
    with raises_errno(errno.ENOENT):
        table.edit_dest(svc.key, dest(addr=RIP2))
    with raises_errno(errno.ENOENT):
        table.del_dest(svc.key, dest(addr=RIP2))
    with raises_errno(errno.ERANGE):
        table.add_dest(svc.key, dest(addr=RIP2, u_threshold=0, l_threshold=10))
    with raises_errno(errno.ERANGE):
        table.add_dest(svc.key, dest(addr=RIP2, weight=-1))
    with raises_errno(errno.EINVAL):  # not unicast
        table.add_dest(svc.key, dest(addr=ipaddress.ip_address("224.0.0.1")))
    with raises_errno(errno.EINVAL):  # another family, not tunnelled
        table.add_dest(svc.key, Dest(addr=ipaddress.ip_address("2001:db8::1"), port=80,
                                     af=model.AF_INET6, fwd=Forward.ROUTE))
    table.add_dest(svc.key, Dest(addr=ipaddress.ip_address("2001:db8::1"), port=80,
                                 af=model.AF_INET6, fwd=Forward.TUNNEL))
    with raises_errno(errno.EINVAL):
        table.add_dest(svc.key, dest(addr=RIP2, fwd=Forward.TUNNEL, tun_type=model.TunType.GUE))
    assert [d.addr for d in table.get_service(svc.key).dests] == [
        ipaddress.ip_address("2001:db8::1"), RIP1]


def test_dests_are_kept_newest_first_and_edits_keep_position(table):
    svc = tcp_service()
    table.add_service(svc)
    for last in range(1, 5):
        table.add_dest(svc.key, dest(addr=ipaddress.ip_address(f"198.18.1.{last}")))
    table.edit_dest(svc.key, dest(addr=ipaddress.ip_address("198.18.1.2"), weight=9,
                                  fwd=Forward.MASQ))
    got = table.get_service(svc.key).dests
    assert [str(d.addr) for d in got] == ["198.18.1.4", "198.18.1.3", "198.18.1.2", "198.18.1.1"]
    assert got[2].weight == 9 and got[2].fwd == Forward.MASQ


def test_edit_service_replaces_settings_and_keeps_dests(table):
    svc = tcp_service(scheduler="rr", flags=model.SVC_F_PERSISTENT, timeout=60, netmask=0xFFFFFF00)
    table.add_service(svc)
    table.add_dest(svc.key, dest())
    table.edit_service(tcp_service(scheduler="wrr"))
    got = table.get_service(svc.key)
    assert got.scheduler == "wrr"
    assert not got.persistent and got.timeout == 0 and got.netmask == model.DEFAULT_NETMASK_V4
    assert len(got.dests) == 1


def test_ipv6_netmask_must_be_a_prefix_length(table):
    svc = Service(af=model.AF_INET6, protocol=model.IPPROTO_TCP,
                  addr=ipaddress.ip_address("2001:db8::1"), port=80, netmask=0)
    with raises_errno(errno.EINVAL):
        table.add_service(svc)
    svc.netmask = 64
    table.add_service(svc)


def test_timeouts_zero_keeps_a_value_and_bad_values_are_einval(table):
    table.set_timeouts(Timeouts(tcp=1000, tcp_fin=0, udp=200))
    assert table.get_timeouts() == Timeouts(tcp=1000, tcp_fin=120, udp=200)
    with raises_errno(errno.EINVAL):
        table.set_timeouts(Timeouts(tcp=-1, tcp_fin=1, udp=1))
    assert table.get_timeouts() == Timeouts(tcp=1000, tcp_fin=120, udp=200)


def test_zero_resets_counters_of_one_or_all(table):
    a, b = tcp_service(80), tcp_service(81)
    for svc in (a, b):
        table.add_service(svc)
        table.add_dest(svc.key, dest(port=svc.port))
        stored = table._services[svc.key]
        stored.stats.conns = 5
        stored.dests[0].stats.inpkts = 7
    table.zero(a.key)
    assert table.get_service(a.key).stats.conns == 0
    assert table.get_service(a.key).dests[0].stats.inpkts == 0
    assert table.get_service(b.key).stats.conns == 5
    table.zero()
    assert table.get_service(b.key).dests[0].stats.inpkts == 0


def test_returned_services_are_copies(table):
    svc = tcp_service()
    table.add_service(svc)
    listed = table.get_services()
    listed[0].scheduler = "rr"
    listed[0].dests.append(dest())
    assert table.get_service(svc.key).scheduler == model.DEFAULT_SCHEDULER
    assert table.get_service(svc.key).dests == []


def test_dump_order_walks_hash_buckets_then_fwmarks_newest_first(table):
    table.add_service(Service(af=model.AF_INET, fwmark=1))
    table.add_service(tcp_service(80))
    table.add_service(tcp_service(81))
    order = [(s.fwmark, s.port) for s in table.get_services()]
    assert order[-1] == (1, 0)  # the fwmark table comes after the service table
    assert set(order[:2]) == {(0, 80), (0, 81)}


def test_batch_is_all_or_nothing(table):
    table.add_service(tcp_service(80))
    before = table.get_services()
    with pytest.raises(BatchFailed) as info:
        table.apply_batch([("add_service", {"svc": tcp_service(81)}),
                           ("add_dest", {"key": tcp_service(81).key, "dest": dest()}),
                           ("add_service", {"svc": tcp_service(80)})])
    assert info.value.index == 2 and info.value.errno == errno.EEXIST
    assert table.get_services() == before


def test_batch_refuses_non_table_operations(table):
    with pytest.raises(BatchFailed):
        table.apply_batch([("get_services", {})])


class CountingTable(TableBackend):
    def __init__(self):
        super().__init__()
        self.changes = 0

    def _changed(self):
        self.changes += 1


def test_changed_hook_runs_once_per_change_and_once_per_batch():
    table = CountingTable()
    table.add_service(tcp_service(80))
    assert table.changes == 1
    with pytest.raises(IPVSError):
        table.add_service(tcp_service(80))
    assert table.changes == 1  # a refused change publishes nothing
    table.apply_batch([("add_service", {"svc": tcp_service(81)}),
                       ("add_service", {"svc": tcp_service(82)})])
    assert table.changes == 2
    with pytest.raises(BatchFailed):
        table.apply_batch([("add_service", {"svc": tcp_service(83)}),
                           ("add_service", {"svc": tcp_service(83)})])
    assert table.changes == 2


def test_mark_rules():
    table = TableBackend()
    rule = MarkRule(mark=1, dst_net=ipaddress.ip_network("198.18.0.10/32"),
                    protocol=model.IPPROTO_TCP, dport_lo=80, dport_hi=80)
    table.add_mark_rule(rule)
    with raises_errno(errno.EEXIST):
        table.add_mark_rule(rule)
    assert table.get_mark_rules() == [rule]
    table.flush()  # flushing services keeps mark rules, as iptables marks outlive ipvsadm -C
    assert table.get_mark_rules() == [rule]
    table.del_mark_rule(rule)
    with raises_errno(errno.ENOENT):
        table.del_mark_rule(rule)


def test_concurrent_adds_and_deletes_leave_a_consistent_table():
    table = TableBackend()
    svc = tcp_service()
    table.add_service(svc)
    errors = []

    def worker(n):
        addr = ipaddress.ip_address(f"198.18.2.{n}")
        for _ in range(200):
            try:
                table.add_dest(svc.key, dest(addr=addr))
                table.del_dest(svc.key, dest(addr=addr))
            except IPVSError as exc:  # pragma: no cover - would be a bug
                errors.append(exc)
        table.add_dest(svc.key, dest(addr=addr))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sorted(str(d.addr) for d in table.get_service(svc.key).dests) == sorted(
        f"198.18.2.{n}" for n in range(1, 9))


class FailingPublisher(TableBackend):
    """A subclass whose publishing fails once, like a datapath refusing a configuration."""

    def __init__(self):
        super().__init__()
        self.fail_next = False
        self.published = []

    def _changed(self):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("datapath refused the table")
        self.published.append([s.key for s in self.get_services()])


def test_a_failed_publish_rolls_the_change_back_and_republishes_the_old_table():
    table = FailingPublisher()
    table.add_service(tcp_service(80))
    table.fail_next = True
    with pytest.raises(RuntimeError):
        table.add_service(tcp_service(81))
    assert [s.port for s in table.get_services()] == [80]
    assert table.published[-1] == [tcp_service(80).key]


def test_snapshot_and_restore():
    table = TableBackend()
    table.add_service(tcp_service(80))
    snap = table.snapshot()
    table.add_service(tcp_service(81))
    table.set_timeouts(Timeouts(tcp=5, tcp_fin=0, udp=0))
    table.restore_snapshot(snap)
    assert [s.port for s in table.get_services()] == [80]
    assert table.get_timeouts() == Timeouts()


def test_changes_copy_only_the_touched_service_and_never_edit_published_objects():
    """Copy on write: what a subscriber published (the stored objects) stays as it was."""
    table = TableBackend()
    table.add_service(tcp_service(80))
    table.add_service(tcp_service(81))
    table.add_dest(tcp_service(80).key, dest(RIP1, weight=1))
    before = dict(table._services)
    published_dest = before[tcp_service(80).key].dests[0]

    table.edit_dest(tcp_service(80).key, dest(RIP1, weight=7))
    table.add_dest(tcp_service(80).key, dest(RIP2))
    table.edit_service(tcp_service(80, scheduler="rr"))
    table.zero(tcp_service(80).key)

    after = table._services
    assert after[tcp_service(81).key] is before[tcp_service(81).key]  # untouched: not copied
    assert after[tcp_service(80).key] is not before[tcp_service(80).key]
    assert published_dest.weight == 1 and len(before[tcp_service(80).key].dests) == 1
    assert before[tcp_service(80).key].scheduler == "wlc"
    live = table.get_service(tcp_service(80).key)
    assert live.scheduler == "rr" and [(d.addr, d.weight) for d in live.dests] == [(RIP2, 1), (RIP1, 7)]


def test_a_batch_edits_its_own_copy_and_a_failed_one_restores_the_very_objects():
    table = TableBackend()
    table.add_service(tcp_service(80))
    table.add_dest(tcp_service(80).key, dest(RIP1))
    stored = table._services[tcp_service(80).key]
    with pytest.raises(BatchFailed):
        table.apply_batch([("edit_dest", {"key": tcp_service(80).key, "dest": dest(RIP1, weight=5)}),
                           ("add_dest", {"key": tcp_service(80).key, "dest": dest(RIP2)}),
                           ("add_dest", {"key": tcp_service(80).key, "dest": dest(RIP2)})])
    assert table._services[tcp_service(80).key] is stored
    assert [(d.addr, d.weight) for d in stored.dests] == [(RIP1, 1)]
    table.apply_batch([("edit_dest", {"key": tcp_service(80).key, "dest": dest(RIP1, weight=5)}),
                       ("add_dest", {"key": tcp_service(80).key, "dest": dest(RIP2)})])
    assert [(d.addr, d.weight) for d in table.get_service(tcp_service(80).key).dests] == [
        (RIP2, 1), (RIP1, 5)]
    assert [(d.addr, d.weight) for d in stored.dests] == [(RIP1, 1)]


def test_saved_table_lists_services_in_the_order_they_were_added():
    table = TableBackend()
    ports = [90, 80, 85, 81]
    for port in ports:
        table.add_service(tcp_service(port))
    table.edit_service(tcp_service(90, scheduler="rr"))  # a change keeps the position
    table.add_dest(tcp_service(80).key, dest())
    table.del_service(tcp_service(85).key)
    table.add_service(tcp_service(85))
    with pytest.raises(BatchFailed):  # a refused batch restores the order too
        table.apply_batch([("del_service", {"key": tcp_service(90).key}),
                           ("del_service", {"key": tcp_service(90).key})])
    services, timeouts, marks = table.saved_table()
    assert [s.port for s in services] == [90, 80, 81, 85]
    ages = [table._service_age[s.key] for s in services]
    assert ages == sorted(ages)
