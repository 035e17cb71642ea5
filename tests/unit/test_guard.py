"""The guard's rules (pure functions: what the nft table drops) and the namespace claim."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from lvsuser import model
from lvsuser.director import guard as guard_mod
from lvsuser.director import instance


def _ip(text):
    return ipaddress.ip_address(text)


def _service(vip, port, dests, protocol=model.IPPROTO_TCP):
    af = model.AF_INET6 if _ip(vip).version == 6 else model.AF_INET
    return model.Service(af=af, protocol=protocol, addr=_ip(vip), port=port,
                         dests=[model.Dest(addr=_ip(a), port=p, fwd=f) for a, p, f in dests])


def test_nat_replies_are_dropped_only_when_not_addressed_to_the_director():
    svc = _service("198.18.0.10", 80, [("198.18.1.11", 8080, model.Forward.MASQ)])
    rules = guard_mod.service_rules([svc], [])
    replies = [r for r in rules if "saddr 198.18.1.11" in r]
    assert replies == [
        "ip saddr 198.18.1.11 tcp sport 8080 fib daddr type != local drop",
        "ip saddr 198.18.1.11 icmp type { destination-unreachable, source-quench, time-exceeded, "
        "parameter-problem } fib daddr type != local drop"]


def test_vip_rules_have_no_exception_for_local_addresses():
    """A VIP on the director is one of its addresses; its service traffic stays hidden."""
    svc = _service("198.18.0.10", 80, [("198.18.1.11", 80, model.Forward.MASQ)])
    rules = guard_mod.service_rules([svc], [])
    to_vip = [r for r in rules if "daddr 198.18.0.10" in r]
    assert to_vip and not any("fib" in r for r in to_vip), to_vip
    assert rules.index("ip daddr 198.18.0.10 tcp dport 80 drop") == 0


def test_ipv6_and_portless_nat_replies():
    svc = _service("2001:db8::10", 0, [("2001:db8:1::11", 0, model.Forward.MASQ)],
                   protocol=model.IPPROTO_UDP)
    rules = guard_mod.service_rules([svc], [])
    assert "ip6 daddr 2001:db8::10 meta l4proto udp drop" in rules
    assert "ip6 saddr 2001:db8:1::11 meta l4proto udp fib daddr type != local drop" in rules
    assert any(r.startswith("ip6 saddr 2001:db8:1::11 icmpv6 type") and r.endswith(
        "fib daddr type != local drop") for r in rules)


def test_dr_and_tun_real_servers_get_no_rules():
    svc = _service("198.18.2.100", 80, [("198.18.2.11", 80, model.Forward.ROUTE),
                                        ("198.18.2.12", 80, model.Forward.TUNNEL)])
    rules = guard_mod.service_rules([svc], [])
    assert not any("198.18.2.11" in r or "198.18.2.12" in r for r in rules), rules


def test_script_replaces_the_table_in_one_transaction():
    guard = guard_mod.Guard(table="lvsuser_t1")
    script = guard.script(["eth1", "eth0", "eth0"], ["ip daddr 198.18.0.10 tcp dport 80 drop"])
    lines = script.splitlines()
    # create-if-missing, delete, create: one `nft -f` run, so no moment without a guard
    assert lines[:3] == ["table netdev lvsuser_t1 {}", "delete table netdev lvsuser_t1",
                         "table netdev lvsuser_t1 {"]
    assert script.count('hook ingress device "eth0"') == 1
    assert script.count('hook ingress device "eth1"') == 1
    assert script.count("tcp dport 80 drop") == 2
    with pytest.raises(guard_mod.GuardError):
        guard.script(['eth0"; flush ruleset; "'], [])


def test_table_name_from_the_state_tag():
    from lvsuser import statedir

    guard = guard_mod.Guard.for_director("/run/lvsuser/a.sock")
    assert guard.table == guard_mod.TABLE_PREFIX + statedir.state_tag("/run/lvsuser/a.sock")
    assert guard_mod.Guard.for_director(None).table == f"{guard_mod.TABLE_PREFIX}{os.getpid()}"


def test_which_stale_tables_are_swept(tmp_path):
    """Tables of dead pids go; a tag-named table stays while its director's state dir exists."""
    state_root = tmp_path / "state"
    (state_root / "kept_0123456789ab").mkdir(parents=True)
    live_pid, dead_pid = os.getpid(), 2 ** 22 + 1  # above pid_max's default range: not running
    names = [f"lvsuser_{live_pid}", f"lvsuser_{dead_pid}", "lvsuser_kept_0123456789ab",
             "lvsuser_gone_ba9876543210", "somebody_else", "lvsuser_mine_000000000000"]
    stale = guard_mod.stale_tables(names, own="lvsuser_mine_000000000000", state_root=str(state_root))
    assert stale == [f"lvsuser_{dead_pid}", "lvsuser_gone_ba9876543210"]
    # holding the namespace's claim, another director's table hides traffic from us: it goes,
    # even while that director's state is kept for its own restart
    stale = guard_mod.stale_tables(names, own="lvsuser_mine_000000000000",
                                   state_root=str(state_root), claimed=True)
    assert stale == [f"lvsuser_{dead_pid}", "lvsuser_kept_0123456789ab", "lvsuser_gone_ba9876543210"]


def test_namespace_claim_is_exclusive_and_names_its_holder(tmp_path):
    ns_id = instance.namespace_id()
    claim = instance.claim_namespace(str(tmp_path / "one.sock"), lock_dir=str(tmp_path))
    try:
        path = instance.lock_path(ns_id, str(tmp_path))
        with open(path) as f:
            assert instance.parse_holder(f.read()) == (str(tmp_path / "one.sock"), os.getpid())
        # flock is per open file description: a second claim in this very process is refused too
        with pytest.raises(instance.NamespaceTaken) as refused:
            instance.claim_namespace(str(tmp_path / "two.sock"), lock_dir=str(tmp_path))
        assert str(refused.value) == (
            f"another lvsuser director serves this network namespace (control socket "
            f"{tmp_path / 'one.sock'}, pid {os.getpid()})")
    finally:
        claim.release()
    assert not os.path.exists(path)
    again = instance.claim_namespace(str(tmp_path / "two.sock"), lock_dir=str(tmp_path))
    again.release()


def test_parse_holder_tolerates_garbage():
    assert instance.parse_holder("") == (None, None)
    assert instance.parse_holder("[1]") == (None, None)
    assert instance.parse_holder(json.dumps({"control": 5, "pid": "x"})) == (None, None)
    assert str(instance.NamespaceTaken(None, None)).endswith("(control socket unknown, pid unknown)")


def test_tun_policy_rules_deliver_replies_to_the_director_before_steering_nat_replies():
    """--io tun: VIP rules first, then a plain `lookup local` per family, then the NAT-reply
    rules, so an answer addressed to the director is delivered, not steered into the device."""
    import socket

    from lvsuser.director.tunroutes import RT_TABLE_LOCAL, TunRoutes

    svc4 = _service("198.18.0.10", 80, [("198.18.1.11", 80, model.Forward.MASQ),
                                        ("198.18.1.12", 80, model.Forward.TUNNEL)])
    svc6 = _service("2001:db8::10", 80, [("2001:db8:1::11", 80, model.Forward.MASQ)])
    rules = TunRoutes(None, 7, "lvs7", 20007)._wanted([svc4, svc6], [])
    kinds = ["local" if r.get("table") == RT_TABLE_LOCAL else "reply" if "src" in r else "vip"
             for r in rules]
    assert kinds == ["vip", "vip", "local", "local", "reply", "reply"], rules
    assert [r["family"] for r in rules if r.get("table") == RT_TABLE_LOCAL] == \
        sorted([socket.AF_INET, socket.AF_INET6])
    assert {r["src"] for r in rules if "src" in r} == {"198.18.1.11", "2001:db8:1::11"}
    # no NAT real server, no reply rules and no extra lookups
    dr_only = _service("198.18.0.10", 80, [("198.18.1.11", 80, model.Forward.ROUTE)])
    assert TunRoutes(None, 7, "lvs7", 20007)._wanted([dr_only], []) == [
        dict(family=socket.AF_INET, dst="198.18.0.10", dst_len=32, ip_proto=model.IPPROTO_TCP,
             dport_range="80:80")]


def _nft_message(msg, family, attrs):
    """One nf_tables netlink notification: nlmsghdr, nfgenmsg, attributes (type, bytes)."""
    import struct

    body = b"".join(struct.pack("=HH", 4 + len(v), t) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), (10 << 8) | msg, 0, 0, 0) + payload


def test_watch_reads_which_table_a_notification_is_about():
    from lvsuser.director.guardwatch import mentions_table

    ours, theirs = b"lvsuser_a_0123456789ab\0", b"firewalld\0"
    deltable = _nft_message(2, 5, [(1, ours)])                  # NFT_MSG_DELTABLE
    newrule = _nft_message(6, 5, [(1, ours), (2, b"in0\0")])     # NFT_MSG_NEWRULE
    other_rule = _nft_message(6, 1, [(1, theirs), (2, b"input\0")])
    newgen = _nft_message(15, 0, [(1, b"\0\0\0\7")])  # NFT_MSG_NEWGEN: attribute 1 is its id
    assert mentions_table(deltable, "lvsuser_a_0123456789ab")
    assert mentions_table(other_rule + newrule + newgen, "lvsuser_a_0123456789ab")
    assert not mentions_table(other_rule + newgen, "lvsuser_a_0123456789ab")
    assert not mentions_table(deltable, "lvsuser_a_0123456789")  # a prefix is another table
    # what cannot be read may be ours
    assert mentions_table(deltable[:-3], "lvsuser_b")
    assert not mentions_table(b"", "lvsuser_b")


def test_claims_left_by_killed_directors_are_swept(tmp_path):
    """A lock file nobody holds (its director was killed) goes at the next claim; a held one
    and the claimant's own stay."""
    import fcntl

    dead = tmp_path / "1_1.lock"
    dead.write_text(json.dumps({"control": "/x.sock", "pid": 2 ** 22 + 1}) + "\n")
    held = tmp_path / "1_2.lock"
    held.write_text("{}\n")
    holder = os.open(held, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        claim = instance.claim_namespace(str(tmp_path / "c.sock"), lock_dir=str(tmp_path))
        try:
            assert not dead.exists() and held.exists() and os.path.exists(claim.path)
        finally:
            claim.release()
    finally:
        os.close(holder)


def test_apply_runs_nft_only_when_the_table_would_change(monkeypatch):
    """A weight edit republishes, but the guard's rules are the same: no nft run for it."""
    runs = []
    monkeypatch.setattr(guard_mod, "_run_nft", runs.append)
    monkeypatch.setattr(guard_mod.Guard, "listing", lambda self: "listed")
    guard = guard_mod.Guard(table="lvsuser_t2")
    rules = ["ip daddr 198.18.0.10 tcp dport 80 drop"]
    guard.apply(["eth0"], rules)
    guard.apply(["eth0"], list(rules))
    assert len(runs) == 1
    guard.apply(["eth0", "eth1"], rules)
    guard.apply(["eth0", "eth1"], rules + ["ip daddr 198.18.0.11 tcp dport 80 drop"])
    assert len(runs) == 3
    guard.remove()
    guard.apply(["eth0"], rules)  # removed: installed again even with the same rules
    assert len(runs) == 5 and runs[-2].endswith("delete table netdev lvsuser_t2\n")
