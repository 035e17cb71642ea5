"""Connection table behaviour, on both cores: TCP states and timeouts, counts per real server,
expiry, a bounded table, persistence templates, port reuse, weight 0, deleted real servers."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from lvsuser import model, pyfastpath
from lvsuser.pyfastpath import DROP, PASS, TX
from tests.unit.golden import (ADDRS, CLIENT_MAC, CORE_IDS, CORES, DIR_CLIENT_MAC, DIR_SERVER_MAC,
                               IF_CLIENT, IF_SERVERS, RS_MACS, make_config, make_service, new_core)

V4 = model.AF_INET
TCP_P, UDP_P = model.IPPROTO_TCP, model.IPPROTO_UDP
NAT, DR = model.Forward.MASQ, model.Forward.ROUTE

pytestmark = pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)


def client_pkt(flags="S", sport=40000, client=None, proto=TCP_P, dport=80, vip=None):
    a = ADDRS[V4]
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == TCP_P else UDP(sport=sport, dport=dport)
    return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
               / IP(src=client or a["client"], dst=vip or a["vip"]) / l4)


def server_pkt(flags="SA", sport=80, rs=0, client=None, cport=40000):
    a = ADDRS[V4]
    return raw(Ether(src=RS_MACS[rs], dst=DIR_SERVER_MAC)
               / IP(src=a["rs"][rs], dst=client or a["client"]) / TCP(sport=sport, dport=cport, flags=flags))


def only_conn(core, now):
    rows = [r for r in core.connections(now) if r["cport"] != 0]
    assert len(rows) == 1, rows
    return rows[0]


def dest_counts(core, i=0, svc=0):
    d = core.services()[svc].dests[i]
    return d.activeconns, d.inactconns, d.persistconns


def test_tcp_states_nat_handshake_and_close(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT)]))
    t = 100.0
    assert core.process(client_pkt("S"), IF_CLIENT, t)[0] == TX
    assert only_conn(core, t)["state"] == "SYN_RECV" and only_conn(core, t)["expires"] == 60
    assert dest_counts(core) == (0, 1, 0)
    assert core.process(server_pkt("SA"), IF_SERVERS, t)[0] == TX
    assert only_conn(core, t)["state"] == "SYN_RECV"
    core.process(client_pkt("A"), IF_CLIENT, t)
    row = only_conn(core, t)
    assert (row["state"], row["expires"]) == ("ESTABLISHED", 900)
    assert dest_counts(core) == (1, 0, 0)  # active only in ESTABLISHED
    core.process(client_pkt("FA"), IF_CLIENT, t)
    assert only_conn(core, t)["state"] == "CLOSE_WAIT"
    assert dest_counts(core) == (0, 1, 0)
    core.process(server_pkt("FA"), IF_SERVERS, t)
    assert only_conn(core, t)["state"] == "TIME_WAIT"
    assert only_conn(core, t)["expires"] == 120


def test_dr_uses_the_input_only_table(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=DR)]))
    t = 50.0
    core.process(client_pkt("S"), IF_CLIENT, t)
    core.process(client_pkt("A"), IF_CLIENT, t)
    assert only_conn(core, t)["state"] == "ESTABLISHED"
    core.process(client_pkt("FA"), IF_CLIENT, t)
    row = only_conn(core, t)
    assert (row["state"], row["expires"]) == ("FIN_WAIT", 120)


def test_set_timeouts_apply(core_cls):
    timeouts = model.Timeouts(tcp=30, tcp_fin=7, udp=11)
    cfg = make_config([make_service(fwd=DR), make_service(fwd=DR, protocol=UDP_P)], timeouts=timeouts)
    core = new_core(core_cls, cfg)
    core.process(client_pkt("S"), IF_CLIENT, 0.0)
    core.process(client_pkt("A"), IF_CLIENT, 0.0)
    core.process(client_pkt(proto=UDP_P, sport=5000), IF_CLIENT, 0.0)
    rows = {r["protocol"]: r for r in core.connections(0.0)}
    assert rows["TCP"]["expires"] == 30
    assert (rows["UDP"]["state"], rows["UDP"]["expires"]) == ("UDP", 11)
    core.process(client_pkt("FA"), IF_CLIENT, 0.0)
    assert {r["protocol"]: r for r in core.connections(0.0)}["TCP"]["expires"] == 7


def test_udp_counts_inactive_and_expires(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT, protocol=UDP_P)]))
    core.process(client_pkt(proto=UDP_P), IF_CLIENT, 10.0)
    assert dest_counts(core) == (0, 1, 0)
    assert core.expire(10.0 + 299) == 0
    assert core.expire(10.0 + 300.5) == 1
    assert core.connections(311.0) == []
    assert dest_counts(core) == (0, 0, 0)
    assert core.counters()["conn_expired"] == 1


def test_each_packet_rearms_the_timer(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT, protocol=UDP_P)]))
    core.process(client_pkt(proto=UDP_P), IF_CLIENT, 0.0)
    core.process(client_pkt(proto=UDP_P), IF_CLIENT, 200.0)
    assert core.expire(350.0) == 0
    assert only_conn(core, 350.0)["expires"] == 150


def test_table_full_is_counted_and_expired_entries_are_reclaimed(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=DR, protocol=UDP_P)]), max_conns=3)
    for port in range(3):
        assert core.process(client_pkt(proto=UDP_P, sport=1000 + port), IF_CLIENT, 0.0)[0] == TX
    assert core.process(client_pkt(proto=UDP_P, sport=2000), IF_CLIENT, 1.0)[0] == DROP
    assert core.counters()["table_full"] == 1
    assert core.conn_count() == 3
    # once they are due, a new connection takes an expired one's place
    assert core.process(client_pkt(proto=UDP_P, sport=2001), IF_CLIENT, 400.0)[0] == TX


def test_weight_zero_keeps_existing_connections(core_cls):
    svc = make_service(fwd=NAT, ndests=2, weights=[1, 1])
    core = new_core(core_cls, make_config([svc]))
    core.process(client_pkt("S", sport=1), IF_CLIENT, 0.0)  # -> rs0 (first available)
    svc.dests[0].weight = 0
    core.publish(make_config([svc]))
    out = core.process(client_pkt("A", sport=1), IF_CLIENT, 1.0)
    assert out[0] == TX and IP(out[1][14:]).dst == ADDRS[V4]["rs"][0]
    out = core.process(client_pkt("S", sport=2), IF_CLIENT, 1.0)
    assert IP(out[1][14:]).dst == ADDRS[V4]["rs"][1]


def test_deleted_dest_expires_its_connections(core_cls):
    svc = make_service(fwd=NAT, ndests=2)
    core = new_core(core_cls, make_config([svc]))
    core.process(client_pkt("S", sport=1), IF_CLIENT, 0.0)
    assert len(core.connections(0.0)) == 1
    del svc.dests[0]
    core.publish(make_config([svc]))
    assert core.connections(0.0) == []
    assert core.counters()["conn_dest_gone"] == 1
    # the next SYN of that client goes to the remaining server
    out = core.process(client_pkt("S", sport=1), IF_CLIENT, 1.0)
    assert IP(out[1][14:]).dst == ADDRS[V4]["rs"][1]
    assert dest_counts(core, 0) == (0, 1, 0)


def test_port_reuse_in_time_wait_is_rescheduled_at_once(core_cls):
    svc = make_service(fwd=DR, ndests=2)
    core = new_core(core_cls, make_config([svc]))
    core.process(client_pkt("S"), IF_CLIENT, 0.0)
    core.process(client_pkt("A"), IF_CLIENT, 0.0)
    core.process(client_pkt("FA"), IF_CLIENT, 0.0)   # FIN_WAIT
    core.process(client_pkt("A"), IF_CLIENT, 0.0)    # stays FIN_WAIT (input only)
    core.process(client_pkt("R"), IF_CLIENT, 0.0)    # CLOSE
    assert only_conn(core, 0.0)["state"] == "CLOSE"
    verdict, out, _ = core.process(client_pkt("S"), IF_CLIENT, 1.0)
    assert verdict == TX                               # not dropped: no 1 s stall
    assert core.counters()["conn_reused"] == 1
    assert only_conn(core, 1.0)["state"] == "SYN_RECV"
    assert dest_counts(core, 0)[:2] == (0, 1)


def test_persistence_templates(core_cls):
    svc = make_service(fwd=DR, ndests=2, flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT,
                       timeout=360, netmask=0xFFFFFF00)
    core = new_core(core_cls, make_config([svc]))
    out1 = core.process(client_pkt("S", sport=1), IF_CLIENT, 0.0)
    assert out1[2] == IF_SERVERS and out1[1][:6] == bytes.fromhex(RS_MACS[0].replace(":", ""))
    rows = core.connections(0.0)
    template = [r for r in rows if r["cport"] == 0][0]
    assert (template["protocol"], template["caddr"], template["vport"], template["expires"]) == \
        ("TCP", ipaddress.ip_address("198.18.0.0"), 80, 360)
    assert dest_counts(core, 0) == (0, 1, 1)
    # rs0 goes quiet: the same /24 still lands on rs0 through the template
    svc.dests[0].weight = 0
    core.publish(make_config([svc]))
    out2 = core.process(client_pkt("S", sport=2, client="198.18.0.77"), IF_CLIENT, 5.0)
    assert out2[1][:6] == bytes.fromhex(RS_MACS[0].replace(":", ""))
    # a template outlives its connections' timers while they live (expire_later) ...
    core.process(client_pkt("A", sport=2, client="198.18.0.77"), IF_CLIENT, 6.0)  # ESTABLISHED
    assert core.expire(370.0) == 1           # the SYN_RECV one (60 s); the template stays
    assert sorted(r["cport"] for r in core.connections(370.0)) == [0, 2]
    # (its timer fired at 365 and was re-armed to 725, then to 1085: the connection lived on)
    assert core.expire(6.0 + 900 + 1) == 1
    assert [r["cport"] for r in core.connections(1000.0)] == [0]
    assert core.expire(1086.0) == 1
    assert core.connections(1086.0) == []
    assert dest_counts(core, 0) == (0, 0, 0)


def test_fwmark_service_by_mark_rule(core_cls):
    svc = model.Service(af=V4, fwmark=7, scheduler="first", dests=[
        model.Dest(addr=ipaddress.ip_address(ADDRS[V4]["rs"][0]), port=0, fwd=DR)])
    rule = model.MarkRule(mark=7, dst_net=ipaddress.ip_network("198.18.0.96/28"), protocol=TCP_P,
                          dport_lo=80, dport_hi=443)
    core = new_core(core_cls, make_config([svc], mark_rules=[rule]))
    assert core.process(client_pkt("S", dport=443), IF_CLIENT, 0.0)[0] == TX
    assert core.process(client_pkt("S", dport=22), IF_CLIENT, 0.0)[0] == PASS
    row = only_conn(core, 0.0)
    assert (row["vport"], row["dport"]) == (443, 443)  # port 0 dest: the packet's port


def test_upper_threshold_sets_overload(core_cls):
    svc = make_service(fwd=DR, ndests=2)
    svc.dests[0].u_threshold = 2
    core = new_core(core_cls, make_config([svc]))
    targets = []
    for port in range(4):
        out = core.process(client_pkt("S", sport=port + 1), IF_CLIENT, 0.0)
        targets.append(out[1][:6])
    rs0, rs1 = (bytes.fromhex(m.replace(":", "")) for m in RS_MACS)
    assert targets == [rs0, rs0, rs1, rs1]
    assert core.services()[0].dests[0].flags & model.DEST_F_OVERLOAD


def test_tcp_without_syn_and_no_connection_is_left_to_the_kernel(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT)]))
    assert core.process(client_pkt("A"), IF_CLIENT, 0.0) == (PASS, None, 0)
    assert core.counters()["tcp_not_syn"] == 1


def test_stats_and_rates(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT, protocol=UDP_P)]))
    core.expire(0.0)
    for i in range(100):
        core.process(client_pkt(proto=UDP_P, sport=1000 + i), IF_CLIENT, 0.5)
    core.expire(2.0)
    svc = core.services()[0]
    assert (svc.stats.conns, svc.stats.inpkts) == (100, 100)
    assert svc.stats.inbytes == 100 * 28
    assert svc.dests[0].stats.conns == 100
    # one 2-second sample of 100 conns: cps = ((100 << 9) >> 2 + 0x1FF) >> 10 = 13 (ip_vs_est)
    assert svc.stats.cps == ((((100 << 9) >> 2) + 0x1FF) >> 10)
    core.zero()
    assert core.services()[0].stats.conns == 0


def test_unknown_scheduler_gets_no_connections(core_cls):
    svc = make_service(fwd=NAT, scheduler="no-such-scheduler")
    core = new_core(core_cls, make_config([svc]))
    assert core.process(client_pkt("S"), IF_CLIENT, 0.0)[0] == DROP
    assert core.counters()["no_scheduler"] == 1


def test_bad_config_is_refused_and_nothing_changes(core_cls):
    core = new_core(core_cls, make_config([make_service(fwd=NAT)]))
    core.process(client_pkt("S"), IF_CLIENT, 0.0)
    bad = make_config([make_service(fwd=NAT, port=70000)])
    with pytest.raises(ValueError):
        core.publish(bad)
    assert len(core.connections(0.0)) == 1
    assert core.process(client_pkt("A"), IF_CLIENT, 0.1)[0] == TX


def test_c_scheduler_and_python_twin_agree(core_cls):
    """rr is a C scheduler in the compiled core and the Python twin in pyfastpath."""
    svc = make_service(fwd=DR, ndests=2, scheduler="rr")
    core = core_cls()
    core.publish(make_config([svc]))
    macs = [core.process(client_pkt("S", sport=p), IF_CLIENT, 0.0)[1][:6] for p in range(1, 5)]
    rs0, rs1 = (bytes.fromhex(m.replace(":", "")) for m in RS_MACS)
    # ip_vs_rr: the first pick is the list head's successor... of the head: dests[0], then [1]
    assert macs == [rs0, rs1, rs0, rs1]


def test_tcp_table_is_the_kernels(core_cls):
    assert core_cls.tcp_state_table() == pyfastpath.TCP_STATES
    # spot checks against tcp_states[] in ip_vs_proto_tcp.c
    table = core_cls.tcp_state_table()
    assert table[2][pyfastpath.S_NONE] == pyfastpath.S_CLOSE            # INPUT ack in NONE
    assert table[8][pyfastpath.S_NONE] == pyfastpath.S_SYN_RECV         # INPUT-ONLY syn
    assert table[4 + 1][pyfastpath.S_ESTABLISHED] == pyfastpath.S_FIN_WAIT  # OUTPUT fin


def test_local_node_dest_goes_to_the_directors_stack(core_cls):
    svc = make_service(fwd=model.Forward.LOCALNODE, protocol=UDP_P)
    cfg = make_config([svc])
    cfg.routes.clear()                      # a local dest needs no route
    core = new_core(core_cls, cfg)
    assert core.process(client_pkt(proto=UDP_P), IF_CLIENT, 0.0) == (PASS, None, 0)
    assert core.counters()["local_node"] == 1
    assert only_conn(core, 0.0)["state"] == "UDP"


def test_default_expire_call_is_bounded_and_repeated_calls_free_everything(core_cls):
    # A driver calls expire() with the core lock held: one default call must stay small even
    # when the whole table is due at once, and calling again must finish the job.
    due = 200_000
    core = new_core(core_cls, make_config([make_service(fwd=DR, protocol=UDP_P)]),
                    max_conns=due + 1024)
    ports_per_client = 65536 - 1024
    t = 10.0
    for client in range(due // ports_per_client + 1):
        # one scapy frame per client address, then only the source port bytes change (UDP
        # checksum 0: nothing else to fix up)
        frame = bytearray(raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
                              / IP(src=f"198.18.200.{client + 1}", dst=ADDRS[V4]["vip"])
                              / UDP(sport=1024, dport=80, chksum=0)))
        sport_at = 14 + 20
        for sport in range(1024, 1024 + min(ports_per_client, due - client * ports_per_client)):
            frame[sport_at:sport_at + 2] = sport.to_bytes(2, "big")
            assert core.process(bytes(frame), IF_CLIENT, t)[0] == TX
    assert core.conn_count() == due
    later = t + 300 + 1  # past the UDP timeout of every entry
    first = core.expire(later)
    assert 0 < first <= pyfastpath.EXPIRE_MAX_FREED
    assert core.conn_count() == due - first
    gone, calls = first, 1
    while core.conn_count() and calls < 2 * due // pyfastpath.EXPIRE_MAX_FREED + 64:
        freed = core.expire(later)
        assert freed <= pyfastpath.EXPIRE_MAX_FREED
        gone += freed
        calls += 1
    assert gone == due and core.conn_count() == 0
    assert core.counters()["conn_expired"] == due
    assert dest_counts(core) == (0, 0, 0)


def test_a_slot_reused_across_address_families_keeps_each_entrys_addresses(core_cls):
    """IPv4 entries hold their addresses in the entry, IPv6 ones in a side array at the same index
    (C core): one slot taken in turn by v6, v4 and v6 connections must list and NAT each one
    with its own addresses, and never find a connection of the other family."""
    from scapy.layers.inet6 import IPv6
    V6 = model.AF_INET6
    config = make_config([make_service(fwd=NAT, protocol=UDP_P),
                          make_service(af=V6, fwd=NAT, protocol=UDP_P)])
    core = new_core(core_cls, config, max_conns=1)
    a4, a6 = ADDRS[V4], ADDRS[V6]

    def v6_in(sport):
        return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC) / IPv6(src=a6["client"], dst=a6["vip"])
                   / UDP(sport=sport, dport=80))

    def v6_reply(cport):
        return raw(Ether(src=RS_MACS[0], dst=DIR_SERVER_MAC) / IPv6(src=a6["rs"][0], dst=a6["client"])
                   / UDP(sport=80, dport=cport))

    def v4_reply(cport):
        return raw(Ether(src=RS_MACS[0], dst=DIR_SERVER_MAC) / IP(src=a4["rs"][0], dst=a4["client"])
                   / UDP(sport=80, dport=cport))

    now = 0.0
    for family, sport in ((V6, 5001), (V4, 5002), (V6, 5003), (V4, 5004)):
        pkt = v6_in(sport) if family == V6 else client_pkt(proto=UDP_P, sport=sport)
        verdict, out = core.process(pkt, IF_CLIENT, now)[:2]
        assert verdict == TX
        row = only_conn(core, now)
        a = a6 if family == V6 else a4
        assert (str(row["caddr"]), row["cport"], str(row["vaddr"]), str(row["daddr"])) == \
            (a["client"], sport, a["vip"], a["rs"][0])
        # the reply gets the VIP back as its source, from wherever the entry keeps it
        reply = v6_reply(sport) if family == V6 else v4_reply(sport)
        verdict, out = core.process(reply, IF_SERVERS, now + 0.1)[:2]
        assert verdict == TX
        ip = Ether(bytes(out))[IPv6 if family == V6 else IP]
        assert (ip.src, ip.dst, ip[UDP].sport) == (a["vip"], a["client"], 80)
        # a reply of the other family with the same ports is not this connection's
        other = v4_reply(sport) if family == V6 else v6_reply(sport)
        assert core.process(other, IF_SERVERS, now + 0.2)[0] == PASS
        now += 400.0   # past the UDP timeout: the next connection takes this slot
        assert core.expire(now) == 1
