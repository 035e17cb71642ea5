"""Rule changes applied as deltas, with connections live, on both cores: an edited, added or
deleted real server or service changes only itself; untouched connections keep forwarding to
the same real server with byte-exact rewrites; a deleted real server's connections are gone
(from listings, counts, and their packets take the kernel's path); a change never visits the
connection table (compiled core: entries of a deleted real server stay in the table until a
lookup or the sweep frees them); a failed publish leaves everything as it was."""
from __future__ import annotations

import copy
import ipaddress

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from lvsuser import _fastpath, model
from lvsuser.fastpath.config import DestRoute
from lvsuser.pyfastpath import PASS, TX
from tests.unit.golden import (ADDRS, CLIENT_MAC, CORE_IDS, CORES, DIR_CLIENT_MAC, DIR_SERVER_MAC,
                               IF_CLIENT, IF_SERVERS, mac_bytes, make_config)

V4 = model.AF_INET
TCP_P, UDP_P = model.IPPROTO_TCP, model.IPPROTO_UDP
NAT = model.Forward.MASQ
VIP2 = "198.18.0.101"
# three real servers: the two of the golden set and one more on the same segment
RS = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
RS_MAC = ["02:00:00:00:01:01", "02:00:00:00:01:02", "02:00:00:00:01:03"]

both_cores = pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)


def dest(i, weight=1, **kw):
    return model.Dest(addr=ipaddress.ip_address(RS[i]), port=8080, fwd=NAT, weight=weight, af=V4, **kw)


def service(dests, vip=None, scheduler="rr", protocol=TCP_P, **kw):
    return model.Service(af=V4, protocol=protocol, addr=ipaddress.ip_address(vip or ADDRS[V4]["vip"]),
                         port=80, scheduler=scheduler, dests=list(dests), **kw)


def config(services):
    cfg = make_config(services)
    cfg.routes[ipaddress.ip_address(RS[2])] = DestRoute(
        ifindex=IF_SERVERS, src_mac=mac_bytes(DIR_SERVER_MAC), dst_mac=mac_bytes(RS_MAC[2]),
        src_addr=ipaddress.ip_address(ADDRS[V4]["dip"]))
    return cfg


def from_client(sport, flags="A", vip=None, payload=b"hello"):
    return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
               / IP(src=ADDRS[V4]["client"], dst=vip or ADDRS[V4]["vip"], ttl=64, id=sport)
               / TCP(sport=sport, dport=80, flags=flags, seq=1000, ack=2000) / payload)


def expected_to_server(sport, rs, flags="A", payload=b"hello"):
    """What NAT must send to real server `rs`, built by scapy (its own checksums)."""
    return raw(Ether(src=DIR_SERVER_MAC, dst=RS_MAC[rs])
               / IP(src=ADDRS[V4]["client"], dst=RS[rs], ttl=63, id=sport)
               / TCP(sport=sport, dport=8080, flags=flags, seq=1000, ack=2000) / payload)


def from_server(sport, rs, flags="A", payload=b"world"):
    return raw(Ether(src=RS_MAC[rs], dst=DIR_SERVER_MAC)
               / IP(src=RS[rs], dst=ADDRS[V4]["client"], ttl=64, id=7)
               / TCP(sport=8080, dport=sport, flags=flags, seq=2000, ack=1005) / payload)


def expected_to_client(sport, flags="A", payload=b"world", vip=None):
    return raw(Ether(src=DIR_CLIENT_MAC, dst=CLIENT_MAC)
               / IP(src=vip or ADDRS[V4]["vip"], dst=ADDRS[V4]["client"], ttl=63, id=7)
               / TCP(sport=80, dport=sport, flags=flags, seq=2000, ack=1005) / payload)


def open_conns(core, ports, now=1.0, vip=None):
    """SYN on each port; returns {port: real server index} as the core chose."""
    chosen = {}
    for port in ports:
        verdict, out, ifindex = core.process(from_client(port, "S", vip=vip, payload=b""), IF_CLIENT, now)
        assert verdict == TX and ifindex == IF_SERVERS
        chosen[port] = RS.index(IP(out[14:]).dst)
    return chosen


def assert_forwarding(core, chosen, now=2.0, vip=None):
    """Every connection forwards to its real server, byte for byte, both ways."""
    for port, rs in chosen.items():
        assert core.process(from_client(port, vip=vip), IF_CLIENT, now) == \
            (TX, expected_to_server(port, rs), IF_SERVERS)
        assert core.process(from_server(port, rs), IF_SERVERS, now) == \
            (TX, expected_to_client(port, vip=vip), IF_CLIENT)


def counts(core, svc_index=0):
    return {str(d.addr): (d.activeconns, d.inactconns, d.persistconns)
            for d in core.services()[svc_index].dests}


def new_core(core_cls, cfg, **kw):
    core = core_cls(**kw)
    core.publish(cfg)
    return core


@both_cores
def test_edit_in_place_keeps_every_connection(core_cls):
    svc = service([dest(2), dest(1), dest(0)])
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, range(41000, 41006))
    assert sorted(set(chosen.values())) == [0, 1, 2]
    before = counts(core)
    edited = copy.deepcopy(svc)
    edited.dests[1].weight = 5
    edited.dests[2].u_threshold = 100
    core.publish(config([edited]))
    assert counts(core) == before
    assert_forwarding(core, chosen)
    assert core.counters()["conn_dest_gone"] == 0
    assert core.services()[0].dests[1].weight == 5


@both_cores
def test_weight_zero_drains_without_touching_connections(core_cls):
    svc = service([dest(1), dest(0)])
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, range(42000, 42004))
    drained = copy.deepcopy(svc)
    drained.dests[1].weight = 0      # RS[0]
    core.publish(config([drained]))
    assert_forwarding(core, chosen)
    fresh = open_conns(core, range(42100, 42104))
    assert set(fresh.values()) == {1}


@both_cores
def test_added_dest_leaves_connections_and_takes_new_ones(core_cls):
    svc = service([dest(0)])
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, range(43000, 43003))
    assert set(chosen.values()) == {0}
    grown = copy.deepcopy(svc)
    grown.dests.insert(0, dest(1))   # newest first, as the kernel lists them
    core.publish(config([grown]))
    assert [str(d.addr) for d in core.services()[0].dests] == [RS[1], RS[0]]
    assert counts(core) == {RS[1]: (0, 0, 0), RS[0]: (0, 3, 0)}
    assert_forwarding(core, chosen)
    assert set(open_conns(core, range(43100, 43104)).values()) == {0, 1}


@both_cores
def test_deleted_dest_takes_only_its_connections(core_cls):
    svc = service([dest(2), dest(1), dest(0)])
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, range(44000, 44009))
    lost = {p for p, rs in chosen.items() if rs == 1}
    kept = {p: rs for p, rs in chosen.items() if rs != 1}
    assert len(lost) == 3
    shrunk = copy.deepcopy(svc)
    del shrunk.dests[1]              # RS[1]
    core.publish(config([shrunk]))
    assert core.counters()["conn_dest_gone"] == 3
    assert core.conn_count() == 6
    listed = {r["cport"] for r in core.connections(2.0)}
    assert listed == set(kept)
    assert counts(core) == {RS[2]: (0, 3, 0), RS[0]: (0, 3, 0)}
    assert_forwarding(core, kept)
    # the deleted real server's connections are not there: mid-connection packets go to the
    # kernel (as after ip_vs_conn_expire), the real server's replies are not ours any more
    for port in lost:
        assert core.process(from_client(port), IF_CLIENT, 2.0) == (PASS, None, 0)
        assert core.process(from_server(port, 1), IF_SERVERS, 2.0) == (PASS, None, 0)
    assert core.counters()["tcp_not_syn"] == 3
    # the same real server added back is a new real server: the old connections stay gone
    core.publish(config([svc]))
    for port in lost:
        assert core.process(from_client(port), IF_CLIENT, 3.0) == (PASS, None, 0)
    assert core.conn_count() == 6
    assert_forwarding(core, kept, now=3.0)


@both_cores
def test_deleted_service_takes_only_its_connections(core_cls):
    one = service([dest(0)])
    two = service([dest(1)], vip=VIP2)
    core = new_core(core_cls, config([one, two]))
    first = open_conns(core, range(45000, 45003))
    second = open_conns(core, range(45100, 45103), vip=VIP2)
    core.publish(config([two]))
    assert core.counters()["conn_dest_gone"] == 3
    assert [s.key for s in core.services()] == [two.key]
    assert {r["cport"] for r in core.connections(2.0)} == set(second)
    assert_forwarding(core, second, vip=VIP2)
    for port in first:
        # no service on that VIP any more: not ours at all
        assert core.process(from_client(port), IF_CLIENT, 2.0) == (PASS, None, 0)
    # added back: a new service; old connections stay gone, new ones work
    core.publish(config([one, two]))
    assert core.process(from_client(45000), IF_CLIENT, 3.0) == (PASS, None, 0)
    assert open_conns(core, [45200], now=3.0) == {45200: 0}
    assert core.conn_count() == 4


@both_cores
def test_persistence_template_of_a_deleted_dest_goes_with_it(core_cls):
    svc = service([dest(1), dest(0)], flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT, timeout=300)
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, [46000, 46001])
    rs = set(chosen.values())
    assert len(rs) == 1        # the template sends the client back to the same real server
    rs = rs.pop()
    assert counts(core)[RS[rs]] == (0, 2, 1)
    shrunk = copy.deepcopy(svc)
    shrunk.dests = [d for d in shrunk.dests if str(d.addr) != RS[rs]]
    core.publish(config([shrunk]))
    assert core.counters()["conn_dest_gone"] == 3       # two connections and their template
    assert core.connections(2.0) == [] and core.conn_count() == 0
    again = open_conns(core, [46002], now=2.0)
    assert again[46002] != rs
    rows = core.connections(2.0)
    assert len(rows) == 2 and {r["daddr"] for r in rows} == {ipaddress.ip_address(RS[again[46002]])}
    assert core.conn_count() == 2


class Recording:
    """A plugin scheduler that records the hooks it hears (and picks the first dest)."""

    log: list = []

    def __init__(self, service):
        self.service = service
        Recording.log.append(("init", service.port, len(service.dests)))

    def update(self):
        Recording.log.append(("update", self.service.port, len(self.service.dests)))

    def add_dest(self, d):
        Recording.log.append(("add_dest", self.service.port, str(d.addr)))

    def del_dest(self, d):
        Recording.log.append(("del_dest", self.service.port, str(d.addr)))

    def upd_dest(self, d):
        Recording.log.append(("upd_dest", self.service.port, str(d.addr)))

    def schedule(self, pkt, now):
        for d in self.service.dests:
            if d.weight > 0:
                return d
        return None


def recording_factory(name, svc):
    if name != "recording":
        raise KeyError(name)
    return Recording(svc)


@both_cores
def test_schedulers_hear_only_their_own_changes(core_cls):
    a = service([dest(1), dest(0)], scheduler="recording")
    b = service([dest(0)], scheduler="recording", vip=VIP2)
    b.port = 81
    Recording.log = []
    core = core_cls(scheduler_factory=recording_factory)
    core.publish(config([a, b]))
    assert sorted(Recording.log) == [("init", 80, 2), ("init", 81, 1)]
    Recording.log = []
    core.publish(config([a, b]))                  # nothing changed: nobody hears anything
    assert Recording.log == []
    b2 = copy.deepcopy(b)
    b2.dests[0].weight = 3
    core.publish(config([a, b2]))
    assert Recording.log == [("upd_dest", 81, RS[0])]
    Recording.log = []
    a2 = copy.deepcopy(a)
    a2.dests = [dest(2), a2.dests[1]]             # RS[1] out, RS[2] in
    core.publish(config([a2, b2]))
    assert Recording.log == [("del_dest", 80, RS[1]), ("add_dest", 80, RS[2])]


@both_cores
def test_generation_is_returned_and_running(core_cls):
    core = core_cls()
    assert core.running_generation() == 0
    g1 = core.publish(config([service([dest(0)])]))
    g2 = core.publish(config([service([dest(0), dest(1)])]))
    assert (g1, g2) == (1, 2)
    assert core.running_generation() == 2 == core.generation


@both_cores
def test_a_failed_publish_changes_nothing(core_cls):
    svc = service([dest(1), dest(0)])
    core = new_core(core_cls, config([svc]))
    chosen = open_conns(core, range(47000, 47004))
    before = (core.services(), core.connections(2.0), core.conn_count(), core.running_generation())
    bad = copy.deepcopy(svc)
    del bad.dests[0]
    broken = service([dest(2, weight=-1)], vip=VIP2)
    with pytest.raises(ValueError):
        core.publish(config([bad, broken]))
    assert (core.services(), core.connections(2.0), core.conn_count(),
            core.running_generation()) == before
    assert core.counters()["conn_dest_gone"] == 0
    assert_forwarding(core, chosen)


@both_cores
def test_rr_follows_its_dests_through_deltas(core_cls):
    """ip_vs_rr: new dests enter at the head and leave the cursor on its dest; deleting the
    cursor's dest steps it back to the dest before it, so the one after it comes next."""
    svc = service([dest(1), dest(0)], protocol=UDP_P)
    core = new_core(core_cls, config([svc]))

    def pick(port):
        verdict, out, _ = core.process(udp_from_client(port), IF_CLIENT, 1.0)
        assert verdict == TX
        return RS.index(IP(out[14:]).dst)

    assert pick(1) == 1                      # cursor on RS[1], list position 0
    grown = service([dest(2), dest(1), dest(0)], protocol=UDP_P)
    core.publish(config([grown]))            # RS[2] enters at the head: the cursor stays on RS[1]
    assert pick(2) == 0
    assert pick(3) == 2                      # wraps to the head
    assert pick(4) == 1                      # cursor on RS[1]
    shrunk = service([dest(2), dest(0)], protocol=UDP_P)
    core.publish(config([shrunk]))           # the cursor's dest goes: back to RS[2]
    assert pick(5) == 0
    edited = service([dest(2, weight=3), dest(0)], protocol=UDP_P)
    core.publish(config([edited]))           # an edit leaves the cursor alone
    assert pick(6) == 2


# ---------------------------------------------------------------- compiled core: structure
GONE_SLOT, USED_SLOT = 2, 1


def udp_from_client(sport, vip=None):
    return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
               / IP(src=ADDRS[V4]["client"], dst=vip or ADDRS[V4]["vip"]) / UDP(sport=sport, dport=80) / b"q")


def test_a_change_visits_no_connection_entry():
    """Deleting a real server leaves its entries in the table, untouched (no walk): only the
    slot is marked gone, with the reference count of what points at it; they are not there
    for listings and counts, and a lookup or the sweep frees them later."""
    svc = service([dest(1), dest(0)], protocol=UDP_P)
    core = new_core(_fastpath.Core, config([svc]))
    for port in range(48000, 48040):
        assert core.process(udp_from_client(port), IF_CLIENT, 1.0)[0] == TX
    entries = core._entries()
    assert len(entries) == 40
    slots = core._slots()["dests"]
    assert sorted(refs for _, refs, _ in slots.values()) == [20, 20]
    # an edit: every entry byte-identical, the same slots
    edited = copy.deepcopy(svc)
    edited.dests[0].weight = 9
    core.publish(config([edited]))
    assert core._entries() == entries and core._slots()["dests"] == slots
    # a delete: still every entry, untouched; the dest's slot is gone with 20 references
    shrunk = copy.deepcopy(edited)
    del shrunk.dests[0]                       # RS[1]
    core.publish(config([shrunk]))
    assert core._entries() == entries
    gone = {s: v for s, v in core._slots()["dests"].items() if v[0] == GONE_SLOT}
    assert [refs for _, refs, _ in gone.values()] == [20]
    assert core.conn_count() == 20 and len(core.connections(1.0)) == 20
    assert core.counters()["conn_dest_gone"] == 20
    # one lookup frees its own entry on the spot
    lost_port = next(p for p in range(48000, 48040)
                     if all(str(r["cport"]) != str(p) for r in core.connections(1.0)))
    verdict, out, _ = core.process(udp_from_client(lost_port), IF_CLIENT, 1.5)
    assert verdict == TX and IP(out[14:]).dst == RS[0]     # rescheduled: UDP needs no SYN
    assert len(core._entries()) == 40                       # 1 freed, 1 new
    assert [v[1] for v in core._slots()["dests"].values() if v[0] == GONE_SLOT] == [19]
    # the sweep frees the rest in passing (not counted as expired) and then the slot itself
    expired = core.counters()["conn_expired"]
    core.expire(2.0, budget=0)
    assert len(core._entries()) == 21 and core.conn_count() == 21
    assert core.counters()["conn_expired"] == expired
    assert all(v[0] == USED_SLOT for v in core._slots()["dests"].values())
    assert len(core._slots()["dests"]) == 1


def test_a_deleted_service_keeps_its_slot_while_referenced():
    one = service([dest(0)], protocol=UDP_P)
    core = new_core(_fastpath.Core, config([one]))
    core.process(udp_from_client(49000), IF_CLIENT, 1.0)
    core.publish(config([]))
    assert core.services() == [] and core.conn_count() == 0
    assert list(core._slots()["services"].values()) == [(GONE_SLOT, 1)]
    core.expire(2.0, budget=0)
    assert core._slots() == {"dests": {}, "services": {}}
    assert core._entries() == []


def test_full_slot_pools_refuse_a_publish_and_change_nothing():
    svc = service([dest(1), dest(0)], protocol=UDP_P)
    core = new_core(_fastpath.Core, config([svc]), max_dests=3, max_services=2)
    core.process(udp_from_client(50000), IF_CLIENT, 1.0)
    before = (core.services(), core.connections(1.0), core._slots(), core.running_generation())
    grown = copy.deepcopy(svc)
    grown.dests[:0] = [dest(2)]
    other = service([dest(2)], vip=VIP2, protocol=UDP_P)
    with pytest.raises(MemoryError):
        core.publish(config([grown, other]))      # 4 dest slots needed, 3 exist
    assert (core.services(), core.connections(1.0), core._slots(),
            core.running_generation()) == before
    # a deleted dest's slot is held by its connection: replacing it also needs a fourth slot
    replaced = service([dest(2), dest(0)], protocol=UDP_P)
    core.publish(config([replaced]))
    assert len(core._slots()["dests"]) == 3
    with pytest.raises(MemoryError):
        core.publish(config([service([dest(1), dest(2), dest(0)], protocol=UDP_P)]))
    core.expire(400.0, budget=0)                  # the connection expires, its slot is freed
    core.publish(config([service([dest(1), dest(2), dest(0)], protocol=UDP_P)]))
    assert [str(d.addr) for d in core.services()[0].dests] == [RS[1], RS[2], RS[0]]


# ---------------------------------------------------------------- both cores, random deltas
def random_config(rng):
    """One or two services on two VIPs, random dests (subset, order, weights, thresholds),
    random scheduler and persistence: what a session of ipvsadm edits may leave."""
    services = []
    for vip, protocol in ((ADDRS[V4]["vip"], TCP_P), (VIP2, UDP_P)):
        if rng.random() < 0.2:
            continue
        picked = rng.sample(range(3), rng.randint(0, 3))
        dests = [dest(i, weight=rng.choice([0, 1, 1, 2, 3]),
                      u_threshold=rng.choice([0, 0, 2, 3])) for i in picked]
        flags = model.SVC_F_HASHED | (model.SVC_F_PERSISTENT if rng.random() < 0.3 else 0)
        services.append(service(dests, vip=vip, protocol=protocol, flags=flags, timeout=20,
                                scheduler=rng.choice(["rr", "wlc", "wrr", "sh"])))
    return config(services)


def random_frame(rng):
    port = rng.randint(60000, 60011)
    if rng.random() < 0.3:           # a real server's reply
        rs = rng.randrange(3)
        return from_server(port, rs, rng.choice(["A", "SA", "FA", "R"])), IF_SERVERS
    if rng.random() < 0.3:
        return udp_from_client(port, vip=VIP2), IF_CLIENT
    return from_client(port, rng.choice(["S", "S", "A", "FA", "R"])), IF_CLIENT


def observe(core, now):
    return (core.counters(), sorted(sorted((k, str(v)) for k, v in row.items())
                                    for row in core.connections(now)),
            [(s.key, s.scheduler, [(str(d.addr), d.weight, d.activeconns, d.inactconns,
                                    d.persistconns, d.flags, d.stats.conns, d.stats.inpkts)
                                   for d in s.dests]) for s in core.services()],
            core.conn_count())


@pytest.mark.parametrize("seed", range(12))
def test_random_deltas_both_cores_agree(seed):
    """The same random publishes, packets and expiries through both cores: the same verdicts
    and frames, listings, counts and counters, and the compiled core's bookkeeping holds
    (what the slots count is what the table holds)."""
    import random
    rng = random.Random(seed)
    py, c = CORES[0](), _fastpath.Core(max_dests=16)
    now = 1.0
    for step in range(400):
        roll = rng.random()
        if roll < 0.08:
            cfg = random_config(rng)
            assert py.publish(copy.deepcopy(cfg)) == c.publish(cfg)
        elif roll < 0.12:
            now += rng.choice([1, 5, 30, 400])
            assert py.expire(now, budget=0) == c.expire(now, budget=0), step
        else:
            frame, ifindex = random_frame(rng)
            assert py.process(frame, ifindex, now) == c.process(frame, ifindex, now), step
        if step % 20 == 0 or roll < 0.12:
            assert observe(py, now) == observe(c, now), step
            slots = c._slots()["dests"]
            assert sum(refs for _, refs, _ in slots.values()) == len(c._entries())
            assert c.conn_count() == len(c.connections(now))
    assert observe(py, now) == observe(c, now)


@both_cores
def test_a_dest_listed_twice_is_refused(core_cls):
    core = new_core(core_cls, config([service([dest(0)])]))
    with pytest.raises(ValueError, match="listed twice"):
        core.publish(config([service([dest(0), dest(1), dest(0, weight=3)])]))
    assert [str(d.addr) for d in core.services()[0].dests] == [RS[0]]
