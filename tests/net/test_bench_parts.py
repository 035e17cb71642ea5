"""The benchmark's parts: the frames trafgen sends, wrk parsing, and the report's arithmetic.

These need no namespaces; the trafgen test writes to a pcap file instead of a device.
"""
import ipaddress
import os
import shutil
import subprocess

import pytest
from scapy.all import IP, UDP, Ether, rdpcap

from bench import report, traffic
from bench.topology import CLIENT_ADDR, NEW_FLOW_SOURCES, UDP_PORT, VIP

DST_MAC, SRC_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _trafgen_frames(tmp_path, variant, targets, count):
    conf = tmp_path / "t.cfg"
    conf.write_text(traffic.trafgen_config(variant, targets, DST_MAC, SRC_MAC))
    pcap = tmp_path / "out.pcap"
    subprocess.run(["trafgen", "--conf", str(conf), "--out", str(pcap), "--num", str(count),
                    "--cpus", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    return rdpcap(str(pcap))


@pytest.mark.skipif(not shutil.which("trafgen"), reason="trafgen not installed (tools/setup.sh)")
def test_flows_variant_is_64_byte_udp_over_1000_flows(tmp_path):
    frames = _trafgen_frames(tmp_path, "flows", ("198.18.1.2", "198.18.2.2"), 4000)
    flows = set()
    for frame in frames:
        assert len(frame) == 60  # + 4 bytes of FCS on the wire = 64
        parsed = Ether(bytes(frame))
        assert parsed.dst == DST_MAC and parsed.src == SRC_MAC
        ip, udp = parsed[IP], parsed[UDP]
        assert ip.src == CLIENT_ADDR and udp.dport == UDP_PORT
        # Checksums are right: scapy recomputes them when they are deleted.
        check = Ether(bytes(parsed))
        del check[IP].chksum, check[UDP].chksum
        check = Ether(bytes(check))
        assert (check[IP].chksum, check[UDP].chksum) == (ip.chksum, udp.chksum)
        flows.add((ip.dst, udp.sport))
    assert len(flows) == traffic.FLOWS
    # Templates alternate: half the frames to each target.
    assert {dst for dst, _ in flows} == {"198.18.1.2", "198.18.2.2"}


@pytest.mark.skipif(not shutil.which("trafgen"), reason="trafgen not installed (tools/setup.sh)")
def test_newflows_variant_opens_new_flows_from_our_range(tmp_path):
    frames = _trafgen_frames(tmp_path, "newflows", (VIP, VIP), 3000)
    sources = ipaddress.ip_network(NEW_FLOW_SOURCES)
    flows = set()
    for frame in frames:
        parsed = Ether(bytes(frame))
        assert ipaddress.ip_address(parsed[IP].src) in sources
        assert parsed[IP].dst == VIP
        flows.add((parsed[IP].src, parsed[UDP].sport))
    assert len(flows) > 0.95 * len(frames)  # nearly every frame is a flow not seen before


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown packet-rate variant"):
        traffic.trafgen_config("bursty", (VIP, VIP), DST_MAC, SRC_MAC)


WRK_OUTPUT = """\
Running 1s test @ http://198.18.100.1:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.05ms    1.10ms  12.21ms   80.00%
    Req/Sec    12.50k     1.00k   13.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.50ms
     90%    3.10ms
     99%    1.20s
  12514 requests in 1.00s, 1.93MB read
  Socket errors: connect 3, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  12467.78
Transfer/sec:      1.92MB
"""


def test_wrk_output_is_parsed_with_units():
    run = traffic.parse_wrk(WRK_OUTPUT)
    assert run.requests == 12514 and run.seconds == pytest.approx(1.0)
    assert run.requests_per_s == pytest.approx(12467.78)
    assert run.p50_us == pytest.approx(812.0)
    assert run.p99_us == pytest.approx(1.2e6)
    assert run.errors == 6 and run.non_2xx == 7


def test_wrk_output_without_latency_is_an_error():
    with pytest.raises(ValueError, match="wrk output lacks"):
        traffic.parse_wrk("Requests/sec: 10\n")


def _cand(name, label, medians, baseline=False, available=True, reason=""):
    return {"name": name, "label": label, "baseline": baseline, "available": available,
            "reason": reason, "runs": {m: [v] for m, v in medians.items()}, "details": {},
            "errors": [], "medians": medians}


def _report(nat_medians, nat_available=True):
    return {
        "meta": {"mode": "quick", "rounds": 1, "seconds": 1.0, "date": "d", "host": "h",
                 "commit": "c", "command": "python3 -m bench"},
        "candidates": {
            "forward": _cand("forward", "kernel forwarding (ceiling)",
                             {"udp_flows_pps": 400_000.0, "http_p50_us": 50.0}, baseline=True),
            "nft-dnat": _cand("nft-dnat", "nftables DNAT rr",
                              {"udp_flows_pps": 300_000.0, "tcp_conn_per_s": 10_000.0},
                              baseline=True),
            "lvsuser-nat-afpacket": _cand("lvsuser-nat-afpacket", "lvsuser NAT --io afpacket",
                                          nat_medians, available=nat_available,
                                          reason="" if nat_available else "it broke"),
        },
        "profiles": {},
    }


def test_targets_report_ratio_reached_and_limit():
    data = _report({"udp_flows_pps": 480_000.0, "tcp_conn_per_s": 9_000.0, "http_p50_us": 70.0})
    verdicts = {v["metric"]: v for v in report.evaluate_targets(data)
                if v.get("candidate") == "lvsuser-nat-afpacket"}
    nat_rate = verdicts["udp_flows_pps"]
    assert nat_rate["status"] == "met" and nat_rate["reached"] == pytest.approx(1.6)
    assert verdicts["tcp_conn_per_s"]["status"] == "missed"
    assert verdicts["tcp_conn_per_s"]["reached"] == pytest.approx(0.9)
    assert "no profile" in verdicts["tcp_conn_per_s"]["limit"]
    assert verdicts["http_p50_us"]["status"] == "met"
    assert verdicts["http_p50_us"]["reached"] == pytest.approx(20.0)
    dr = next(v for v in report.evaluate_targets(data) if v.get("candidate") == "lvsuser-dr-afpacket")
    assert dr["status"] == "not measured" and "lvsuser-dr-afpacket" in dr["why"]


def test_unavailable_candidate_is_reported_with_its_reason(tmp_path):
    data = _report({}, nat_available=False)
    paths = report.write(data, str(tmp_path))
    text = open(paths["md"]).read()
    assert "| lvsuser NAT --io afpacket | not available: it broke |" in text
    assert "**not measured**: NAT packet rate" in text
    assert "1.33x" in text  # forward / nft-dnat packet rate, in the ratio table
    assert os.path.getsize(paths["png"]) > 0


SEND_FRAMES = r"""
import sys
from scapy.all import IP, TCP, UDP, Ether, Raw, sendp
ifname, dst_mac, src, rip, vip, port = sys.argv[1:7]
port = int(port)
payload = Raw(b"x" * 18)
frames = [
    IP(src=src, dst=rip) / UDP(sport=1000, dport=port) / payload,                        # counted
    IP(src=src, dst=rip, proto=4) / IP(src="198.18.0.2", dst=vip) / UDP(sport=1001, dport=port)
    / payload,                                                                            # counted
    IP(src=src, dst=rip) / UDP(sport=1002, dport=port + 1) / payload,
    IP(src=src, dst=rip, proto=4) / IP(src="198.18.0.2", dst=vip) / UDP(sport=1003, dport=port + 1)
    / payload,
    IP(src=src, dst=rip, proto=4) / IP(src="198.18.0.2", dst=vip) / TCP(sport=1004, dport=port),
    IP(src=src, dst=rip, proto=4) / IP(src="198.18.0.2", dst=vip, options=b"\x01\x01\x01\x00")
    / UDP(sport=1005, dport=port) / payload,        # inner options: the fixed offsets do not hold
]
sendp([Ether(dst=dst_mac) / f for f in frames], iface=ifname, verbose=False)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_real_servers_count_plain_and_tunnelled_benchmark_packets():
    """The delivered-packet counter takes plain benchmark UDP and, for TUN, IP-in-IP carrying
    benchmark UDP, where it reaches the real server (before decapsulation), and nothing else."""
    import sys
    from bench.topology import BenchTopology
    with BenchTopology("lvsbc") as topo:
        rs = topo.real_servers[0]
        before = topo.delivered()[rs.name][1]
        rs_mac = topo.mac(rs.ns, "eth0")
        result = topo.run(topo.director, [sys.executable, "-c", SEND_FRAMES, rs.director_if, rs_mac,
                                          rs.director_side, rs.addr, VIP, str(UDP_PORT)],
                          timeout=60)
        assert result.returncode == 0, result.stderr
        after = topo.delivered()
        assert after[rs.name][1] - before == 2
        assert after[topo.real_servers[1].name][1] == 0
