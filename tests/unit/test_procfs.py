"""--procfs: /proc/net/ip_vs, ip_vs_stats and ip_vs_conn in the kernel's formats.

The expected texts were worked out by hand from ip_vs_info_seq_show / ip_vs_stats_show
(net/netfilter/ipvs/ip_vs_ctl.c) and ip_vs_conn_seq_show (ip_vs_conn.c): field by field,
with the widths of their printf formats.
"""
import ipaddress
import os
import time

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import rules
from lvsuser.ops import procfs

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def service_v4_nat():
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=V4("198.18.0.1"),
                        port=80, scheduler="rr")
    svc.dests = [  # newest first, as the kernel lists them
        model.Dest(addr=V4("198.18.1.2"), port=8080, fwd=model.Forward.ROUTE, weight=1,
                   activeconns=3, inactconns=1234567890),
        model.Dest(addr=V4("198.18.1.1"), port=8080, fwd=model.Forward.MASQ, weight=3),
    ]
    return svc


def service_v4_udp_persistent_ops():
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_UDP, addr=V4("198.18.0.2"),
                        port=53, scheduler="wlc",
                        flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT | model.SVC_F_ONEPACKET,
                        timeout=60, netmask=0xFFFFFF00)
    svc.dests = [model.Dest(addr=V4("198.18.1.3"), port=53, fwd=model.Forward.TUNNEL, weight=0)]
    return svc


def service_v6_persistent():
    svc = model.Service(af=model.AF_INET6, protocol=model.IPPROTO_TCP, addr=V6("2001:db8::1"),
                        port=443, scheduler="sh", flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT,
                        timeout=360, netmask=128)
    svc.dests = [model.Dest(addr=V6("2001:db8::10"), port=443, fwd=model.Forward.ROUTE, weight=5,
                            af=model.AF_INET6, activeconns=12, inactconns=7)]
    return svc


def service_fwmark():
    svc = model.Service(af=model.AF_INET, fwmark=7, scheduler="rr")
    svc.dests = [model.Dest(addr=V4("198.18.1.4"), port=0, fwd=model.Forward.LOCALNODE)]
    return svc


EXPECTED_IP_VS = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    "TCP  C6120001:0050 rr  \n"
    "  -> C6120102:1F90      Route   1      3          1234567890\n"
    "  -> C6120101:1F90      Masq    3      0          0         \n"
    "UDP  C6120002:0035 wlc ops  persistent 15000 FFFFFF00\n"
    "  -> C6120103:0035      Tunnel  0      0          0         \n"
    "TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:01BB sh persistent 90000 80000000\n"
    "  -> [2001:0db8:0000:0000:0000:0000:0000:0010]:01BB      Route   5      12         7         \n"
    "FWM  00000007 rr \n"
    "  -> C6120104:0000      Local   1      0          0         \n"
)


def test_ip_vs_in_the_kernels_format():
    services = [service_v4_nat(), service_v4_udp_persistent_ops(), service_v6_persistent(),
                service_fwmark()]
    assert procfs.format_ip_vs(services) == EXPECTED_IP_VS


def test_fwmark_services_come_after_the_address_table_and_size_is_the_backends():
    text = procfs.format_ip_vs([service_fwmark(), service_v4_nat()], conn_tab_size=65536)
    lines = text.splitlines()
    assert lines[0] == "IP Virtual Server version 1.2.1 (size=65536)"
    assert lines[3].startswith("TCP  C6120001:0050") and lines[6] == "FWM  00000007 rr "


def test_persistence_timeout_is_printed_in_jiffies_of_the_given_hz():
    assert "persistent 6000 FFFFFF00" in procfs.format_service(service_v4_udp_persistent_ops(), hz=100)


def test_ip_vs_stats_in_the_kernels_format():
    total = model.Stats(conns=0x1234, inpkts=0xABCDEF12, outpkts=1, inbytes=0x100000000,
                        outbytes=0, cps=2, inpps=0x10, outpps=0, inbps=0xFFFFFFFFFF, outbps=3)
    assert procfs.format_ip_vs_stats(total) == (
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n"
        "    1234 ABCDEF12        1        100000000                0\n"
        "\n"
        " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        "       2       10        0       FFFFFFFFFF                3\n")


def test_totals_are_the_sums_of_the_services():
    first, second = service_v4_nat(), service_fwmark()
    first.stats = model.Stats(conns=5, inpkts=50, outpkts=40, inbytes=5000, outbytes=4000, cps=1)
    second.stats = model.Stats(conns=2, inpkts=20, outpkts=0, inbytes=2000, outbytes=0, inbps=9)
    total = procfs.total_stats([first, second])
    assert (total.conns, total.inpkts, total.outpkts, total.inbytes, total.outbytes,
            total.cps, total.inbps) == (7, 70, 40, 7000, 4000, 1, 9)


CONN_ROWS = [
    dict(protocol="TCP", caddr=V4("198.18.2.1"), cport=40000, vaddr=V4("198.18.0.1"), vport=80,
         daddr=V4("198.18.1.1"), dport=8080, state="ESTABLISHED", expires=899, pe_name="",
         pe_data=""),
    dict(protocol="TCP", caddr="198.18.2.1", cport=0, vaddr="198.18.0.1", vport=80,
         daddr="198.18.1.1", dport=8080, state="NONE", expires=359, pe_name="", pe_data=""),
    dict(protocol="UDP", caddr=V6("2001:db8::2"), cport=54321, vaddr=V6("2001:db8::1"), vport=53,
         daddr=V6("2001:db8::10"), dport=53, state="UDP", expires=299, pe_name="sip",
         pe_data="abc"),
    dict(protocol="IP", caddr=V4("198.18.2.9"), cport=0, vaddr=V4("0.0.0.7"), vport=0,
         daddr=V4("198.18.1.4"), dport=0, state="NONE", expires=12345678),
]

EXPECTED_CONN = (
    "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
    "TCP C6120201 9C40 C6120001 0050 C6120101 1F90 ESTABLISHED     899\n"
    "TCP C6120201 0000 C6120001 0050 C6120101 1F90 NONE            359\n"
    "UDP 2001:0db8:0000:0000:0000:0000:0000:0002 D431 2001:0db8:0000:0000:0000:0000:0000:0001 0035"
    " 2001:0db8:0000:0000:0000:0000:0000:0010 0035 UDP             299 sip abc\n"
    "IP  C6120209 0000 00000007 0000 C6120104 0000 NONE        12345678\n"
)


def test_ip_vs_conn_in_the_kernels_format():
    assert "".join(procfs.iter_ip_vs_conn(CONN_ROWS)) == EXPECTED_CONN


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ip_vs"
    target.write_text("old\n")
    before = os.stat(target).st_ino
    procfs.write_atomically(str(target), (f"line {i}\n" for i in range(10000)))
    assert target.read_text().splitlines()[-1] == "line 9999"
    assert os.stat(target).st_ino != before  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ip_vs"]


def _backend(text):
    backend = TableBackend()
    rules.apply_operations(backend, rules.parse_rules(text))
    return backend


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_writer_follows_the_table_and_removes_its_files(tmp_path):
    backend = _backend("-A -t 198.18.0.1:80 -s rr\n-a -t 198.18.0.1:80 -r 198.18.1.1:8080 -m -w 2\n")
    writer = procfs.ProcfsWriter(backend, str(tmp_path / "proc"), interval=0.05).start()
    try:
        net = tmp_path / "proc" / "net"
        assert (net / "ip_vs").read_text().endswith(
            "TCP  C6120001:0050 rr  \n  -> C6120101:1F90      Masq    2      0          0         \n")
        assert (net / "ip_vs_stats").read_text().splitlines()[2].split() == ["0"] * 5
        assert (net / "ip_vs_conn").read_text() == procfs.CONN_HEADER
        rules.apply_operations(backend, rules.parse_rules(
            "-a -t 198.18.0.1:80 -r 198.18.1.2:8080 -g -w 4\n"))
        # -g: the real server gets the service's port, as ipvsadm gives it
        assert wait_for(lambda: "C6120102:0050      Route   4" in (net / "ip_vs").read_text())
        assert (net / "ip_vs").read_text().count("  -> C612") == 2
    finally:
        writer.stop()
    assert not (tmp_path / "proc" / "net").exists()  # it made net/ and leaves nothing behind
    assert (tmp_path / "proc").exists()


def test_writer_keeps_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "dev").write_text("not ours\n")
    writer = procfs.ProcfsWriter(TableBackend(), str(tmp_path), interval=1).start()
    writer.stop()
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["dev"]


class PagedRows(TableBackend):
    """A backend whose connection table arrives in small pages (as a big one would)."""

    def get_connections(self):
        return [dict(CONN_ROWS[0], cport=1000 + i) for i in range(25)]

    def get_connections_page(self, cursor=0, limit=4096):
        return super().get_connections_page(cursor, 7)


def test_connections_are_read_page_by_page(tmp_path):
    writer = procfs.ProcfsWriter(PagedRows(), str(tmp_path), interval=1).start()
    try:
        lines = (tmp_path / "net" / "ip_vs_conn").read_text().splitlines()
    finally:
        writer.stop()
    assert len(lines) == 26
    assert [int(line.split()[2], 16) for line in lines[1:]] == list(range(1000, 1025))


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        procfs.ProcfsWriter(TableBackend(), str(tmp_path), interval=0)


def test_run_refuses_a_procfs_directory_it_cannot_write_in_one_line(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be\n")
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", str(tmp_path / "c.sock"),
                             "--state-dir", str(tmp_path / "state"),
                             "--procfs", str(blocker)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"lvsuser: cannot write the --procfs files under {blocker}: Not a directory")
    assert not (tmp_path / "c.sock").exists()


# --- against kernel IPVS: tests/data/procfs, captured by tools/capture_procfs_refs.py ----------
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "procfs")


def service_blocks(text):
    """The three header lines, and each service with its real servers as one block."""
    lines = text.splitlines(keepends=True)
    blocks = []
    for line in lines[3:]:
        if line.startswith("  -> "):
            blocks[-1] += line
        else:
            blocks.append(line)
    return lines[:3], blocks


def test_same_bytes_as_kernel_ipvs_for_the_same_rules():
    """The kernel mixes a random per-namespace value into its service hash, so the order of
    services differs from boot to boot; each service's block must be identical, byte for byte."""
    import json

    with open(os.path.join(DATA, "meta.json")) as f:
        hz = int(json.load(f)["CONFIG_HZ"])
    backend = TableBackend()
    rules.apply_operations(backend, rules.load_rules_file(os.path.join(DATA, "rules.txt")))
    services = backend.get_services()
    with open(os.path.join(DATA, "ip_vs.txt"), newline="") as f:
        kernel_header, kernel_blocks = service_blocks(f.read())
    ours_header, ours_blocks = service_blocks(procfs.format_ip_vs(services, hz=hz))
    assert ours_header == kernel_header
    assert sorted(ours_blocks) == sorted(kernel_blocks)
    assert len(ours_blocks) == 6
    # within each table the kernel's order is its hash order; fwmark services come last in both
    assert [b.startswith("FWM") for b in ours_blocks] == [b.startswith("FWM") for b in kernel_blocks]
    with open(os.path.join(DATA, "ip_vs_stats.txt"), newline="") as f:
        assert procfs.format_ip_vs_stats(procfs.total_stats(services)) == f.read()
    with open(os.path.join(DATA, "ip_vs_conn.txt"), newline="") as f:
        assert "".join(procfs.iter_ip_vs_conn(backend.iter_connections())) == f.read()


class EndlessRows(TableBackend):
    """A connection table that never ends (as a huge one would seem): stop must still be quick
    and leave nothing behind."""

    def iter_connections(self):
        port = 0
        while True:
            port = (port + 1) & 0xFFFF
            yield dict(CONN_ROWS[0], cport=port)


def test_stop_abandons_a_round_in_progress_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "FIRST_ROUND_WAIT", 0.2)
    writer = procfs.ProcfsWriter(EndlessRows(), str(tmp_path), interval=1).start()
    assert writer.refreshes[procfs.IP_VS_CONN] == 0  # still writing the first round
    threads = list(writer._threads)
    writer.stop()
    assert not any(thread.is_alive() for thread in threads)  # the endless round was abandoned
    assert not (tmp_path / "net").exists()  # no temporary, no ip_vs_conn renamed in late
