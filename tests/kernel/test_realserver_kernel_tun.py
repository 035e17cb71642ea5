"""`lvsuser realserver tun` on a kernel with ipip: the kernel path (VIP on tunl0), for real.

This host's kernel has no ipip, so tests/net only sees the user-space decapsulator.  One guest boot
(tests/kernel/guest_realserver_tun.py) builds the guide's TUN lab as namespaces, configures both
real servers with `lvsuser realserver tun --vip VIP` (ipip not loaded yet for rs1: its run loads
it; rs2 finds tunl0 there), sends HTTP from the client to VIP:80 through kernel IPVS TUN
(`ipvsadm ... -i`) and then through `lvsuser run --io afpacket` configured with
`lvsuser ipvsadm`, and finally runs `--undo`.  The checks here:

  * apply: the command says tunl0 (kernel IPIP), the VIP is on tunl0 and nowhere else, tunl0 is
    up, arp_ignore=1 arp_announce=2 rp_filter=0 on tunl0 and all (the guide's values), no lvtun0
    and no decapsulator process anywhere; `--check` passes;
  * traffic, for each director: every request answered, by both real servers; each real server's
    tunl0 decapsulated packets; every frame from the VIP that reached the client came from a
    real server's MAC and none from the director's, the client's frames to the VIP went to the
    director's MAC, and the director received far fewer bytes than the answers carried;
  * undo: the VIP is gone from tunl0, tunl0 is down, every sysctl is back to its value before
    (strict rp_filter included; tunl0, born during rs1's apply, back to the namespace defaults),
    and a second undo finds nothing to do.

LVSUSER_KERNEL_REUSE=1 reuses the last guest run from pytest's cache.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.kernel.conftest import REPO, reuse_or_run

pytestmark = pytest.mark.kernel

CACHE_KEY = "lvsuser/kernel/realserver_kernel_tun_run"
VIP = "198.18.2.100"
ROLES = ("rs1", "rs2")
DIRECTORS = ("kernel", "lvsuser")
GUIDE = {"arp_ignore": "1", "arp_announce": "2", "rp_filter": "0"}
REQUESTS = 6
BODY = 60000


@pytest.fixture(scope="module")
def run(request, guest):
    def boot():
        result = guest.run(f"cd {REPO} && PYTHONPATH={REPO} exec python3 "
                           "tests/kernel/guest_realserver_tun.py", timeout=240)
        assert result.rc == 0, f"guest run failed ({result.rc}):\n{result.stderr[-4000:]}"
        return json.loads(result.stdout)

    return reuse_or_run(request, CACHE_KEY, boot)


def test_apply_uses_kernel_tunl0(run):
    # ipip was not loaded before rs1's apply: its probe had to load it and still find tunl0
    assert run["ipip_loaded_at_start"] is False
    for role in ROLES:
        done = run["apply"][role]
        assert done["rc"] == 0, done
        assert "kernel IPIP: decapsulating on tunl0" in done["stdout"], done
        assert "decapsulator started" not in done["stdout"], done
        assert f"VIP {VIP}/32 on tunl0" in done["stdout"], done


def test_apply_puts_vip_on_tunl0_only_and_no_decapsulator(run):
    for role in ROLES:
        state = run["after_apply"][role]
        links = state["links"]
        assert "lvtun0" not in links, f"{role}: the user-space TUN device exists"
        assert state["decap"] == [], f"{role}: a decapsulator runs: {state['decap']}"
        assert links["tunl0"]["up"], f"{role}: tunl0 is down"
        holders = [name for name, link in links.items() if f"{VIP}/32" in link["addresses"]]
        assert holders == ["tunl0"], f"{role}: VIP on {holders}"


def test_apply_sets_the_guides_sysctls(run):
    for role in ROLES:
        conf = run["after_apply"][role]["conf"]
        for iface in ("tunl0", "all"):
            for key, value in GUIDE.items():
                assert conf[f"{iface}/{key}"] == value, (role, iface, key, conf)


def test_check_passes(run):
    for role in ROLES:
        done = run["check"][role]
        assert done["rc"] == 0, done
        assert "tunl0" in done["stdout"], done


@pytest.mark.parametrize("director", DIRECTORS)
def test_both_real_servers_answer(run, director):
    if director == "lvsuser":
        assert run["lvsuser"]["director_rc"] == 0, run["lvsuser"]["director_log"]
    requests = run[director]["requests"]
    failed = [r for r in requests if r["error"] or r["body_bytes"] != BODY]
    assert not failed, f"{director}: {failed}\n{run[director].get('listing')}"
    assert all(r["peer"] == VIP for r in requests)
    # rr over two real servers: each gets half
    assert Counter(r["server"] for r in requests) == {"rs1": REQUESTS // 2,
                                                     "rs2": REQUESTS // 2}, requests
    # and each one's tunl0 unwrapped what the director tunnelled to it
    tunl0 = run[director]["tunl0_rx_packets"]
    assert sorted(tunl0) == list(ROLES) and all(tunl0[r] > 0 for r in ROLES), tunl0


@pytest.mark.parametrize("director", DIRECTORS)
def test_replies_bypass_the_director(run, director):
    macs = run["macs"]
    rs_macs = {macs[role] for role in ROLES}
    frames = run[director]["frames"]
    replies = [f for f in frames if not f["outgoing"] and f["ip_src"] == VIP]
    sent = [f for f in frames if f["outgoing"] and f["ip_dst"] == VIP]
    assert replies and sent, f"{director}: capture saw {len(replies)} replies, {len(sent)} sent"
    senders = Counter(f["eth_src"] for f in replies)
    assert set(senders) == rs_macs, (
        f"{director}: replies from the VIP came from {dict(senders)}; real servers {rs_macs}, "
        f"director {macs['director']}")
    assert {f["eth_dst"] for f in sent} == {macs["director"]}, director
    # the answers (REQUESTS x BODY bytes) never crossed the director's eth0
    received = run[director]["director_eth0_rx_bytes"]
    assert received < REQUESTS * BODY // 4, f"{director}: director eth0 received {received} bytes"


def test_undo_restores_everything(run):
    for role in ROLES:
        done = run["undo"][role]
        assert done["rc"] == 0 and "undone" in done["stdout"], done
        before, after = run["before"][role], run["after_undo"][role]
        assert after["links"]["tunl0"]["addresses"] == [], f"{role}: tunl0 keeps an address"
        assert not after["links"]["tunl0"]["up"], f"{role}: tunl0 left up"
        assert after["decap"] == [] and "lvtun0" not in after["links"]
        # the strict rp_filter the namespaces started with is back
        assert after["conf"]["all/rp_filter"] == "1"
        for key, value in before["conf"].items():
            assert after["conf"][key] == value, (role, key, before["conf"], after["conf"])
        # tunl0 did not exist before rs1's apply; it is back to what it was born with
        for key in GUIDE:
            expected = before["conf"].get(f"tunl0/{key}", before["conf"][f"default/{key}"])
            assert after["conf"][f"tunl0/{key}"] == expected, (role, key, after["conf"])
        for name, link in after["links"].items():
            if name != "tunl0":
                assert link["addresses"] == before["links"][name]["addresses"], (role, name)
        again = run["undo_again"][role]
        assert again["rc"] == 0 and "nothing to undo" in again["stdout"], again
