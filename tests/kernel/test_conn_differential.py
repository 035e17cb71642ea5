"""Connection states and counts: lvsuser versus kernel IPVS for the same traffic (kernel oracle).

One guest boot (tests/kernel/guest_conn_traffic.py) builds client, director, rs1 and rs2 as
namespaces, configures TCP and UDP NAT services with `-s rr` on kernel IPVS (real ipvsadm), runs a
fixed scenario (3 TCP held ESTABLISHED, 2 TCP closed with the FIN exchange done, 2 UDP
request/responses), snapshots `-Ln` and `-Lnc`, closes the held connections and snapshots again;
then flushes the kernel and does the same through `lvsuser run` configured with
`lvsuser ipvsadm`.  Here both runs must agree, snapshot by snapshot:

  * ActiveConn and InActConn of every real server (-Ln);
  * the multiset of (protocol, state) of the connection entries (-Lnc);
  * connection by connection (the n-th of the scenario on each side): protocol, state, the real
    server it went to (in -Lnc and as the server itself answered), and the timeout its expiry
    implies (expire + seconds since its last packet) within EXPIRY_TOLERANCE seconds, which
    still tells TIME_WAIT 120 s from FIN_WAIT/CLOSE_WAIT values or ESTABLISHED 900 s from 300 s.

Any difference fails with the first divergent field named.  LVSUSER_KERNEL_REUSE=1 reuses the
last guest run from pytest's cache (for working on the comparison without booting again).
"""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tests.kernel.conftest import REPO, reuse_or_run

pytestmark = pytest.mark.kernel

CACHE_KEY = "lvsuser/kernel/conn_differential_run"
EXPIRY_TOLERANCE = 5  # seconds
PHASES = ("open", "closed")

DEST_LINE = re.compile(r"^\s+->\s+(\S+)\s+(\S+)\s+(-?\d+)\s+(\d+)\s+(\d+)\s*$")
SERVICE_LINE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)")
CONN_LINE = re.compile(r"^(TCP|UDP|SCTP)\s+(\d+):(\d\d)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


@pytest.fixture(scope="module")
def conn_run(request, guest):
    def boot():
        result = guest.run(f"cd {REPO} && PYTHONPATH={REPO} exec python3 "
                           "tests/kernel/guest_conn_traffic.py", timeout=900)
        assert result.rc == 0, f"guest run failed ({result.rc}):\n{result.stderr[-4000:]}"
        return json.loads(result.stdout)

    return reuse_or_run(request, CACHE_KEY, boot)


# ------------------------------------------------------------------------------ parsing

def dest_counters(listing: str) -> dict[str, dict[str, int]]:
    """`ipvsadm -Ln` -> {"TCP 198.18.0.10:80 -> 198.18.1.11:80": {"ActiveConn": n, ...}}."""
    counters, service = {}, None
    for line in listing.splitlines():
        if match := SERVICE_LINE.match(line):
            service = f"{match[1]} {match[2]}"
        elif (match := DEST_LINE.match(line)) and service:
            counters[f"{service} -> {match[1]}"] = {"ActiveConn": int(match[4]),
                                                    "InActConn": int(match[5])}
    return counters


def connection_rows(listing: str) -> dict[int, dict]:
    """`ipvsadm -Lnc` -> {client port: {proto, state, expire (s), destination address}}."""
    rows = {}
    for line in listing.splitlines():
        if match := CONN_LINE.match(line):
            client_port = int(match[5].rsplit(":", 1)[1])
            rows[client_port] = {"proto": match[1], "state": match[4],
                                 "expire": int(match[2]) * 60 + int(match[3]),
                                 "destination": match[7].rsplit(":", 1)[0]}
    return rows


# ------------------------------------------------------------------------------ comparison

def first_divergence(kernel: dict, lvsuser: dict, phase: str) -> str | None:
    """The first field where lvsuser's run differs from the kernel's at snapshot PHASE, or None."""
    where = f"snapshot {phase!r}"
    ksnap, lsnap = kernel["snapshots"][phase], lvsuser["snapshots"][phase]
    for side, snap in (("kernel", ksnap), ("lvsuser", lsnap)):
        for args, output in (("-Ln", snap["ln"]), ("-Lnc", snap["lnc"])):
            if output[2] != 0:
                return f"{where}: {side} ipvsadm {args} failed ({output[2]}): {output[1]}"

    kcount, lcount = dest_counters(ksnap["ln"][0]), dest_counters(lsnap["ln"][0])
    if sorted(kcount) != sorted(lcount):
        return f"{where}: -Ln real servers: kernel {sorted(kcount)}, lvsuser {sorted(lcount)}"
    for dest in kcount:
        for field in ("ActiveConn", "InActConn"):
            if kcount[dest][field] != lcount[dest][field]:
                return (f"{where}: -Ln {dest} {field}: kernel {kcount[dest][field]}, "
                        f"lvsuser {lcount[dest][field]}")

    krows, lrows = connection_rows(ksnap["lnc"][0]), connection_rows(lsnap["lnc"][0])
    kstates = Counter((r["proto"], r["state"]) for r in krows.values())
    lstates = Counter((r["proto"], r["state"]) for r in lrows.values())
    if kstates != lstates:
        return (f"{where}: -Lnc (protocol, state) multiset: kernel {sorted(kstates.items())}, "
                f"lvsuser {sorted(lstates.items())}")

    if len(kernel["connections"]) != len(lvsuser["connections"]):
        return f"{where}: number of scenario connections differs"
    for n, (kconn, lconn) in enumerate(zip(kernel["connections"], lvsuser["connections"]), 1):
        label = f"{where}: connection {n} ({kconn['proto']})"
        if kconn["reached"] != lconn["reached"]:
            return (f"{label}: answering real server: kernel {kconn['reached']}, "
                    f"lvsuser {lconn['reached']}")
        krow, lrow = krows.get(kconn["cport"]), lrows.get(lconn["cport"])
        if (krow is None) != (lrow is None):
            return f"{label}: -Lnc entry present: kernel {krow is not None}, lvsuser {lrow is not None}"
        if krow is None:
            continue
        for field in ("proto", "state", "destination"):
            if krow[field] != lrow[field]:
                return f"{label}: -Lnc {field}: kernel {krow[field]}, lvsuser {lrow[field]}"
        ktimeout = krow["expire"] + ksnap["taken"] - kconn["last_packet"][phase]
        ltimeout = lrow["expire"] + lsnap["taken"] - lconn["last_packet"][phase]
        if abs(ktimeout - ltimeout) > EXPIRY_TOLERANCE:
            return (f"{label}: -Lnc expiry implies a {krow['state']} timeout of "
                    f"{ktimeout:.0f} s on the kernel, {ltimeout:.0f} s on lvsuser "
                    f"(expire {krow['expire']} s vs {lrow['expire']} s)")
    return None


# ------------------------------------------------------------------------------ tests

def test_both_runs_completed(conn_run):
    assert conn_run["director_rc"] == 0, conn_run["director_log"]
    assert conn_run["kernel_flush"][2] == 0, conn_run["kernel_flush"]
    # The kernel is flushed before lvsuser runs: it had no service left to act on its traffic.
    assert not dest_counters(conn_run["kernel_after_flush"][0]), conn_run["kernel_after_flush"]
    for side in ("kernel", "lvsuser"):
        failed = [c for c in conn_run[side]["connections"] if c["error"] or not c["reached"]]
        assert not failed, f"{side}: connections without an answer: {failed}"


def test_kernel_saw_the_scenario(conn_run):
    """The oracle's states are the ones the scenario means to produce, so the comparison below
    covers ESTABLISHED, the end of a FIN exchange and UDP, and both real servers."""
    kernel = conn_run["kernel"]
    rows = connection_rows(kernel["snapshots"]["open"]["lnc"][0])
    states = Counter((r["proto"], r["state"]) for r in rows.values())
    assert states[("TCP", "ESTABLISHED")] == 3, states
    assert states[("UDP", "UDP")] == 2, states
    assert sum(n for (proto, _), n in states.items() if proto == "TCP") == 5, states
    reached = {c["reached"] for c in kernel["connections"]}
    assert reached == {"198.18.1.11", "198.18.1.12"}


@pytest.mark.parametrize("phase", PHASES)
def test_connection_states_and_counts_match_kernel(conn_run, phase):
    divergence = first_divergence(conn_run["kernel"], conn_run["lvsuser"], phase)
    assert divergence is None, divergence
