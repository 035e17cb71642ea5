"""lab/trace.py's drawing half: scapy-built frames in, hop-by-hop text out (no root needed)."""
from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from lvsuser.lab import trace
from lvsuser.lab.plan import plan_for

CLIENT_PORT = 40312
MAC = {"client": "02:00:00:00:01:00", "director": "02:00:00:00:02:00",
       "director1": "02:00:00:00:02:01", "rs1": "02:00:00:00:03:00", "rs2": "02:00:00:00:04:00"}


def frame(host, ifname, direction, t, packet, link="ether"):
    return trace.Frame(host, ifname, direction, t, link, bytes(packet))


def namer_for(mode):
    plan = plan_for(mode)
    return trace.Namer(plan.owner_of_mac(), plan.role_of_address())


def syn(src, dst, dport, ttl=64, sport=CLIENT_PORT):
    return IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, flags="S", seq=1000)


def synack(src, dst, sport, ttl=64):
    return IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=CLIENT_PORT, flags="SA",
                                               seq=5000, ack=1001)


def nat_frames():
    client, vip, rip = "198.19.10.2", "198.19.10.3", "198.18.137.53"
    return [
        frame("client", "eth0", "out", 1.0, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth0", "in", 1.1, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth1", "out", 1.2, Ether(src=MAC["director1"], dst=MAC["rs1"]) / syn(client, rip, 8080, ttl=63)),
        frame("rs1", "eth0", "in", 1.3, Ether(src=MAC["director1"], dst=MAC["rs1"]) / syn(client, rip, 8080, ttl=63)),
        frame("rs1", "eth0", "out", 1.4, Ether(src=MAC["rs1"], dst=MAC["director1"]) / synack(rip, client, 8080)),
        frame("director", "eth1", "in", 1.5, Ether(src=MAC["rs1"], dst=MAC["director1"]) / synack(rip, client, 8080)),
        frame("director", "eth0", "out", 1.6, Ether(src=MAC["director"], dst=MAC["client"]) / synack(vip, client, 80, ttl=63)),
        frame("client", "eth0", "in", 1.7, Ether(src=MAC["director"], dst=MAC["client"]) / synack(vip, client, 80, ttl=63)),
        # another connection's SYN: not part of this request
        frame("client", "eth0", "out", 1.8, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80, sport=40313)),
    ]


def test_nat_path_shows_destination_then_source_rewrite():
    text = "\n".join(trace.render_request(nat_frames(), CLIENT_PORT, namer_for("nat")))
    assert "NAT: destination rewritten 198.19.10.3:80 -> 198.18.137.53:8080 (rs1)" in text
    assert "NAT: source rewritten 198.18.137.53:8080 -> 198.19.10.3:80 (back to the VIP)" in text
    assert "02:00:00:00:03:00 (rs1)" in text
    assert "40313" not in text
    assert "skips the director" not in text
    forward, backward = trace.frames_of_request(nat_frames(), CLIENT_PORT)
    assert [(f.host, f.ifname, f.direction) for f, _ in forward] == [
        ("client", "eth0", "out"), ("director", "eth0", "in"), ("director", "eth1", "out"),
        ("rs1", "eth0", "in")]
    assert [(f.host, f.direction) for f, _ in backward] == [
        ("rs1", "out"), ("director", "in"), ("director", "out"), ("client", "in")]


def test_dr_path_shows_same_ip_header_with_the_real_servers_mac():
    client, vip = "198.18.137.1", "198.18.137.66"
    frames = [
        frame("client", "eth0", "out", 1.0, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth0", "in", 1.1, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth0", "out", 1.2, Ether(src=MAC["director"], dst=MAC["rs2"]) / syn(client, vip, 80)),
        frame("rs2", "eth0", "in", 1.3, Ether(src=MAC["director"], dst=MAC["rs2"]) / syn(client, vip, 80)),
        frame("rs2", "eth0", "out", 1.4, Ether(src=MAC["rs2"], dst=MAC["client"]) / synack(vip, client, 80)),
        frame("client", "eth0", "in", 1.5, Ether(src=MAC["rs2"], dst=MAC["client"]) / synack(vip, client, 80)),
    ]
    lines = trace.render_request(frames, CLIENT_PORT, namer_for("dr"))
    text = "\n".join(lines)
    assert "DR: IP header unchanged, destination MAC is now 02:00:00:00:04:00 (rs2)" in text
    assert "NAT:" not in text and "TUN:" not in text
    # the answer goes from rs2 straight to the client: the director is not on the way back
    back = text.split("SYN-ACK")[1]
    assert "director:eth" not in back
    assert "the answer skips the director: rs2 sends it straight to the client" in back


def test_tun_path_shows_outer_header_and_decapsulation():
    client, vip, dip, rip = "198.18.137.1", "198.18.137.65", "198.18.137.60", "198.18.137.61"
    wrapped = IP(src=dip, dst=rip, proto=4) / syn(client, vip, 80, ttl=63)
    frames = [
        frame("client", "eth0", "out", 1.0, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth0", "in", 1.1, Ether(src=MAC["client"], dst=MAC["director"]) / syn(client, vip, 80)),
        frame("director", "eth0", "out", 1.2, Ether(src=MAC["director"], dst=MAC["rs1"]) / wrapped),
        frame("rs1", "eth0", "in", 1.3, Ether(src=MAC["director"], dst=MAC["rs1"]) / wrapped),
        frame("rs1", "lvtun0", "in", 1.35, syn(client, vip, 80, ttl=63), link="raw"),
        frame("rs1", "eth0", "out", 1.4, Ether(src=MAC["rs1"], dst=MAC["client"]) / synack(vip, client, 80)),
    ]
    text = "\n".join(trace.render_request(frames, CLIENT_PORT, namer_for("tun")))
    assert "IP 198.18.137.60 > 198.18.137.61: IPIP (proto 4)" in text
    assert "[director -> rs1]" in text
    assert "TUN: wrapped in IPIP; outer header 198.18.137.60 > 198.18.137.61 (director -> rs1), proto 4" in text
    assert "rs1:lvtun0 in" in text and "no link layer (tunnel device)" in text
    assert "decapsulated" in text
    # the inner header under the outer one keeps the client and the VIP
    assert f"  IP {client}.{CLIENT_PORT} > {vip}.80: Flags [S]" in text


def test_missing_hops_and_undecodable_frames():
    frames = [trace.Frame("client", "eth0", "out", 1.0, "ether", b"\x00\x01garbage")]
    text = "\n".join(trace.render_request(frames, CLIENT_PORT, namer_for("nat")))
    assert text.count("(not captured)") == 2


def test_retransmitted_syn_is_drawn_once():
    frames = nat_frames()
    retransmit = frames[0]
    frames.append(trace.Frame("client", "eth0", "out", 2.5, "ether", retransmit.data))
    forward, _ = trace.frames_of_request(frames, CLIENT_PORT)
    assert [f.time for f, _ in forward if f.host == "client"] == [1.0]


def test_load_capture_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "capture.jsonl"
    good = {"t": 1.0, "if": "eth0", "dir": "in", "link": "ether", "hex": "00" * 14}
    path.write_text(json.dumps(good) + "\n" + '{"t": 2.0, "if": "et')
    frames = trace.load_capture("rs1", str(path))
    assert len(frames) == 1 and frames[0].host == "rs1" and frames[0].data == b"\x00" * 14
    assert trace.load_capture("rs1", str(tmp_path / "missing")) == []


def test_arp_answerers_and_exchanges():
    vip = "198.18.137.66"
    namer = namer_for("dr")
    frames = [
        frame("client", "eth0", "out", 1.0, Ether(src=MAC["client"], dst="ff:ff:ff:ff:ff:ff") /
              ARP(op=1, hwsrc=MAC["client"], psrc="198.18.137.1", pdst=vip)),
        frame("client", "eth0", "in", 1.1, Ether(src=MAC["rs1"], dst=MAC["client"]) /
              ARP(op=2, hwsrc=MAC["rs1"], psrc=vip, hwdst=MAC["client"], pdst="198.18.137.1")),
        frame("client", "eth0", "in", 1.2, Ether(src=MAC["director"], dst=MAC["client"]) /
              ARP(op=2, hwsrc=MAC["director"], psrc=vip, hwdst=MAC["client"], pdst="198.18.137.1")),
    ]
    assert trace.arp_answerers(frames, vip, namer) == ["rs1", "director"]
    lines = trace.arp_exchanges(frames, vip, namer)
    assert lines[0].endswith(f"ARP, Request who-has {vip} tell 198.18.137.1")
    assert lines[1].endswith(f"ARP, Reply {vip} is-at 02:00:00:00:03:00 (rs1)")


@pytest.mark.parametrize("mode", ["nat", "tun", "dr"])
def test_plans_follow_the_guide(mode):
    plan = plan_for(mode)
    assert {h.role for h in plan.hosts} == {"client", "director", "rs1", "rs2"}
    flags = {"nat": "-m", "tun": "-i", "dr": "-g"}[mode]
    assert plan.ipvsadm[0] == ("-A", "-t", f"{plan.vip}:80", "-s", "rr")
    assert all(line[-1] == flags for line in plan.ipvsadm[1:])
    for host in plan.hosts:
        for interface in host.interfaces:
            assert interface.address.startswith(("198.18.", "198.19."))
            guide_last = interface.guide_address.split()[0].rsplit(".", 1)[1]
            assert guide_last in ("x", interface.address.rsplit(".", 1)[1])
    macs = [i.mac for h in plan.hosts for i in h.interfaces]
    assert len(set(macs)) == len(macs)
    with pytest.raises(ValueError):
        plan_for("ftp")
