"""The kernel IPVS backend against real kernel IPVS, in the QEMU guest (one boot for this module).

1. IPVSBackend called directly: the same changes made by the real ipvsadm and by the backend leave
   tables that the real ipvsadm lists identically; refusals carry the kernel's errno.
2. End to end: `lvsuser run --backend ipvs` driven by lvsuser's ipvsadm, every captured scenario;
   the kernel table the real ipvsadm reads back afterwards is exactly what the real ipvsadm itself
   left, and every command printed what the real ipvsadm printed (apart from lvsuser's documented
   deliberate differences, shared with tests/unit/test_ipvsadm_refs.py).
3. A deliberate deviation is caught and named.
"""
from __future__ import annotations

import errno
import json
import os
import shlex

import pytest

from lvsuser.backends.base import BackendUnavailable
from tests.kernel import differential
from tests.kernel.conftest import REPO, reuse_or_run


def test_unavailable_on_a_host_without_ip_vs():
    if os.path.exists("/proc/net/ip_vs") or os.path.isdir(f"/lib/modules/{os.uname().release}/"
                                                          "kernel/net/netfilter/ipvs"):
        pytest.skip("this host has kernel IPVS")
    from lvsuser.backends.ipvs import IPVSBackend
    with pytest.raises(BackendUnavailable) as info:
        IPVSBackend()
    message = str(info.value)
    assert message == ("kernel IPVS is not available on this host (the ip_vs module is missing); "
                       "run with --backend userspace instead")


def test_parse_proc_conn_rows():
    from lvsuser.backends.ipvs import parse_proc_conn
    text = ("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
            "TCP C6120002 9C40 C6120001 0050 C6120101 0050 ESTABLISHED     899\n"
            "UDP 2001:0db8:0000:0000:0000:0000:0000:0002 1F90 2001:0db8:0000:0000:0000:0000:0000:0001"
            " 0035 2001:0db8:0001:0000:0000:0000:0000:0001 0035 UDP             299\n"
            "garbage line\n")
    rows = parse_proc_conn(text)
    assert len(rows) == 2
    assert str(rows[0]["caddr"]) == "198.18.0.2" and rows[0]["cport"] == 40000
    assert str(rows[0]["daddr"]) == "198.18.1.1" and rows[0]["state"] == "ESTABLISHED"
    assert rows[0]["expires"] == 899 and rows[0]["pe_name"] == ""
    assert str(rows[1]["vaddr"]) == "2001:db8::1" and rows[1]["vport"] == 53
    assert rows[1]["protocol"] == "UDP"


CACHE_KEY = "lvsuser/kernel/ipvs_backend_run"


@pytest.fixture(scope="module")
def guest_run(request, guest):
    """One boot: the direct backend checks, then every scenario end to end, then a deviation.

    The results are kept in pytest's cache; LVSUSER_KERNEL_REUSE=1 reuses them (for working on
    the comparisons without booting again)."""
    def boot():
        scenarios = " ".join(shlex.quote(n) for n in differential.scenario_names())
        script = (
            f"cd {REPO} && export PYTHONPATH={REPO}\n"
            "python3 tests/kernel/guest_backend_checks.py > $VMJOB/backend.json || exit 10\n"
            f"python3 tests/kernel/guest_differential.py --backend ipvs {scenarios} "
            "> $VMJOB/e2e.json || exit 11\n"
            "python3 tests/kernel/guest_differential.py --backend ipvs --deviate basic "
            "> $VMJOB/deviate.json || exit 12\n"
            "ip netns add lvt && ip -n lvt link set lo up && ip -n lvt addr add 198.18.0.1/32 dev lo"
            " || exit 13\n"
            "ip netns exec lvt python3 tests/kernel/guest_traffic_checks.py > $VMJOB/traffic.json"
            " || exit 14\n"
            "cat $VMJOB/backend.json; echo; cat $VMJOB/e2e.json; echo; cat $VMJOB/deviate.json; echo\n"
            "cat $VMJOB/traffic.json\n")
        result = guest.run(script, timeout=1500)
        assert result.rc == 0, f"guest run failed ({result.rc}):\n{result.stderr[-4000:]}"
        backend, e2e, deviate, traffic = (json.loads(line) for line in result.stdout.splitlines()
                                          if line)
        return {"backend": backend, "e2e": e2e, "deviate": deviate, "traffic": traffic}

    return reuse_or_run(request, CACHE_KEY, boot)


def test_backend_info(guest_run):
    report = guest_run["backend"]
    assert report["info"] == {"version": [1, 2, 1], "conn_tab_size": 4096}
    assert report["timeouts_default"] == {"tcp": 900, "tcp_fin": 120, "udp": 300}
    assert report["get_service_missing"] is None
    assert len(report["cases"]) == BACKEND_CASES


BACKEND_CASES = 10  # len(guest_backend_checks.CASES); the guest reports each


@pytest.mark.parametrize("case", range(BACKEND_CASES))
def test_backend_matches_ipvsadm(guest_run, case):
    report = guest_run["backend"]["cases"][case]
    name = report["name"]
    if report["expected_errno"] is None:
        assert all(rc == 0 for rc in report["ipvsadm_rcs"]), f"{name}: ipvsadm refused a line"
        assert report["raised"] is None, f"{name}: backend raised errno {report['raised']}"
        assert report["dests_read_back"] > 0
    else:
        assert report["ipvsadm_rcs"][-1] != 0, f"{name}: ipvsadm accepted what should fail"
        assert report["raised"] == report["expected_errno"], (
            f"{name}: backend raised {errno.errorcode.get(report['raised'])}, kernel gave ipvsadm "
            f"{errno.errorcode[report['expected_errno']]}")
    for listing, (ours, theirs) in enumerate(zip(report["by_backend"], report["by_ipvsadm"])):
        assert ours == theirs, f"{name}: listing {listing} differs"


def test_backend_batch_rolls_back(guest_run):
    batch = guest_run["backend"]["batch"]
    assert batch["failed"] == [7, errno.EEXIST]
    for index, (after, before) in enumerate(zip(batch["after"], batch["before"])):
        assert after == before, f"listing {index} changed by a refused batch"


def test_backend_sync_daemon(guest_run):
    daemon = guest_run["backend"]["daemon"]
    assert daemon["by_ipvsadm"].startswith("backup sync daemon (mcast=lo, syncid=9")
    assert daemon["by_backend"] == daemon["by_ipvsadm"]
    assert daemon["listed"] == [["backup", "lo", 9]]
    assert daemon["after_stop"] == ""


def test_traffic_counters_and_connections_read_back(guest_run):
    """After real UDP and TCP traffic through kernel IPVS, lvsuser's ipvsadm on IPVSBackend prints
    the same counters, connection counts and connection entries as the real ipvsadm."""
    traffic = guest_run["traffic"]
    assert traffic["udp_received"] == 6
    assert traffic["service_conns"] == {"UDP": 2, "TCP": 2}
    assert traffic["dest_active"] == {"UDP": [0], "TCP": [1]}  # one TCP held, one closed
    states = sorted((row["protocol"], row["state"]) for row in traffic["rows"])
    assert states[0] == ("TCP", "ESTABLISHED")
    # the closed one is in a closing state (TIME_WAIT here; timing may catch it a step earlier)
    assert states[1][1] in ("TIME_WAIT", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "CLOSE")
    assert states[2:] == [("UDP", "UDP"), ("UDP", "UDP")]
    for listing in traffic["listings"]:
        assert listing["ours"] == listing["real"], f"ipvsadm {' '.join(listing['args'])} differs"
    assert traffic["conns_ours"][2] == traffic["conns_real"][2] == 0
    assert traffic["conns_ours_rows"] == traffic["conns_real_rows"]


def test_console_ipvsadm_reaches_the_director(guest_run):
    stdout, stderr, rc = guest_run["e2e"]["console_ipvsadm"]
    assert rc == 0, stderr
    assert stdout.startswith("IP Virtual Server version 1.2.1 (size=4096)\n")


@pytest.mark.parametrize("name", differential.scenario_names())
def test_e2e_kernel_table_matches_ipvsadm(guest_run, name):
    scenario = guest_run["e2e"]["scenarios"][name]
    divergence = differential.first_table_divergence(scenario)
    assert divergence is None, divergence


@pytest.mark.parametrize("name", differential.scenario_names())
def test_e2e_outputs_match_ipvsadm(guest_run, name):
    scenario = guest_run["e2e"]["scenarios"][name]
    divergence = differential.first_output_divergence(name, scenario)
    assert divergence is None, divergence


def test_deliberate_deviation_is_named(guest_run):
    scenario = guest_run["deviate"]["scenarios"]["basic"]
    table = differential.first_table_divergence(scenario)
    assert table is not None and "-Sn" in table
    output = differential.first_output_divergence("basic", scenario)
    assert output is not None and "[6] ipvsadm -Ln" in output
