"""State that outlives the process (compiled core): a Core with a state_path keeps its connection
table, real-server and service slots and counters in a shared file mapping.  A first core runs
in a child process, makes connections from scapy frames and is SIGKILLed; a new Core on the same
file, given the same configuration, forwards the same connections to the same real servers with
the same rewrites, lists and counts what the dead one did, and expires on time.  A file of
another layout is refused with a clear error, never misread; fresh=True discards it."""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest

from lvsuser import _fastpath, model, pyfastpath
from lvsuser.fastpath.config import StateError
from lvsuser.pyfastpath import PASS, TX
from tests.unit.golden import IF_CLIENT, IF_SERVERS
from tests.unit.test_core_deltas import (RS, config, dest, expected_to_client, expected_to_server,
                                         from_client, from_server, service)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTS = list(range(52000, 52012))
T0 = 100.0          # the child's clock (time.monotonic() in a director: one boot, one clock)
SIZES = dict(max_conns=4096, max_dests=64, max_services=16)

# The child: the same config and frames as the parent, via the test modules; it reports what
# it sees as JSON and then waits to be killed without closing anything.
CHILD = textwrap.dedent("""
    import json, sys, time
    from lvsuser import _fastpath
    from tests.unit import test_core_state as t
    core = _fastpath.Core(state_path=sys.argv[1], **t.SIZES)
    core.publish(t.the_config())
    chosen = {}
    for port in t.PORTS:
        verdict, out, _ = core.process(t.from_client(port, "S", payload=b""), t.IF_CLIENT, t.T0)
        assert verdict == t.TX, verdict
        chosen[port] = t.rs_of(out)
        core.process(t.from_server(port, chosen[port], "SA", payload=b""), t.IF_SERVERS, t.T0)
        core.process(t.from_client(port, "A", payload=b""), t.IF_CLIENT, t.T0)
    print(json.dumps(t.snapshot(core, chosen)), flush=True)
    time.sleep(60)
""")


def the_config():
    return config([service([dest(2), dest(1), dest(0)]),
                   service([dest(0)], vip="198.18.0.101", scheduler="wlc")])


def rs_of(frame) -> int:
    return RS.index(str(ipaddress.ip_address(frame[14 + 16:14 + 20])))


def snapshot(core, chosen):
    """What a restart must keep, as JSON-comparable values."""
    def text(value):
        return str(value) if not isinstance(value, (int, str)) else value
    return dict(
        chosen={str(p): rs for p, rs in chosen.items()},
        connections=sorted(sorted((k, text(v)) for k, v in row.items())
                           for row in core.connections(T0)),
        counters=core.counters(),
        counts=[[(str(d.addr), d.activeconns, d.inactconns, d.persistconns, d.stats.conns,
                  d.stats.inpkts, d.stats.outpkts, d.stats.inbytes) for d in s.dests]
                for s in core.services()],
        conn_count=core.conn_count())


def jsonable(snap):
    return json.loads(json.dumps(snap))


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "datapath.map"
    yield str(path)
    if path.exists():
        path.unlink()


def run_and_kill(path):
    """Run the first core in a child, read its report, SIGKILL it; returns the report."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        report = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return report


def test_connections_survive_sigkill(state_file):
    report = run_and_kill(state_file)
    chosen = {int(p): rs for p, rs in report["chosen"].items()}
    assert len(set(chosen.values())) == 3          # rr spread them over the three servers
    core = _fastpath.Core(state_path=state_file, **SIZES)
    assert core.adopted
    assert core.counters() == report["counters"] and core.conn_count() == len(PORTS)
    core.publish(the_config())
    assert jsonable(snapshot(core, chosen)) == report
    # half the connections carry on, byte for byte, to the same real servers
    carry = PORTS[:6]
    for port in carry:
        rs = chosen[port]
        assert core.process(from_client(port), IF_CLIENT, T0 + 100) == \
            (TX, expected_to_server(port, rs), IF_SERVERS)
        assert core.process(from_server(port, rs), IF_SERVERS, T0 + 100) == \
            (TX, expected_to_client(port), IF_CLIENT)
    # the others expire when the dead process set them to: ESTABLISHED, 900 s after T0
    assert core.expire(T0 + 899.5, budget=0) == 0
    assert core.expire(T0 + 900.5, budget=0) == len(PORTS) - len(carry)
    assert sorted(r["cport"] for r in core.connections(T0 + 900.5)) == carry
    # and new connections are scheduled as before
    verdict, out, _ = core.process(from_client(53000, "S", payload=b""), IF_CLIENT, T0 + 901)
    assert verdict == TX and rs_of(out) in (0, 1, 2)


def test_a_changed_config_after_adoption_drops_only_what_it_removed(state_file):
    report = run_and_kill(state_file)
    chosen = {int(p): rs for p, rs in report["chosen"].items()}
    core = _fastpath.Core(state_path=state_file, **SIZES)
    changed = the_config()
    first = changed.services[0]
    first.dests = [d for d in first.dests if str(d.addr) != RS[1]]
    del changed.services[1]
    core.publish(changed)
    lost = [p for p, rs in chosen.items() if rs == 1]
    assert core.counters()["conn_dest_gone"] == len(lost)
    assert core.conn_count() == len(PORTS) - len(lost)
    assert [s.key for s in core.services()] == [first.key]
    for port, rs in chosen.items():
        if rs == 1:
            assert core.process(from_client(port), IF_CLIENT, T0 + 1) == (PASS, None, 0)
        else:
            assert core.process(from_client(port), IF_CLIENT, T0 + 1) == \
                (TX, expected_to_server(port, rs), IF_SERVERS)
    # the second service was not named: adopted, then retired; its slot is free again
    assert all(state == 1 for state, _ in core._slots()["services"].values())


def test_a_core_closed_normally_is_adopted_too(state_file):
    first = _fastpath.Core(state_path=state_file, **SIZES)
    first.publish(the_config())
    first.process(from_client(54000, "S", payload=b""), IF_CLIENT, T0)
    rows = first.connections(T0)
    del first
    second = _fastpath.Core(state_path=state_file, **SIZES)
    second.publish(the_config())
    assert second.connections(T0) == rows


def test_one_file_one_core(state_file):
    first = _fastpath.Core(state_path=state_file, **SIZES)
    with pytest.raises(StateError, match="in use"):
        _fastpath.Core(state_path=state_file, **SIZES)
    del first


def test_another_layout_version_is_refused_never_misread(state_file):
    core = _fastpath.Core(state_path=state_file, **SIZES)
    core.publish(the_config())
    core.process(from_client(55000, "S", payload=b""), IF_CLIENT, T0)
    del core
    with open(state_file, "r+b") as f:
        f.seek(8)
        version = struct.unpack("<I", f.read(4))[0]
        f.seek(8)
        f.write(struct.pack("<I", version + 1))
    with pytest.raises(StateError) as err:
        _fastpath.Core(state_path=state_file, **SIZES)
    message = str(err.value)
    assert state_file in message and f"version {version + 1}" in message \
        and f"version {version}" in message
    # other sizes are refused as well
    with open(state_file, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", version))
    with pytest.raises(StateError, match="max_conns=4096"):
        _fastpath.Core(state_path=state_file, max_conns=8192, max_dests=64, max_services=16)
    # not a state file at all
    with open(state_file, "r+b") as f:
        f.write(b"NOTSTATE")
    with pytest.raises(StateError, match="not a datapath state file"):
        _fastpath.Core(state_path=state_file, **SIZES)


def test_fresh_discards(state_file):
    core = _fastpath.Core(state_path=state_file, **SIZES)
    core.publish(the_config())
    core.process(from_client(56000, "S", payload=b""), IF_CLIENT, T0)
    del core
    with open(state_file, "r+b") as f:      # even a file of another version
        f.seek(8)
        f.write(struct.pack("<I", 999))
    core = _fastpath.Core(state_path=state_file, fresh=True, **SIZES)
    assert not core.adopted
    core.publish(the_config())
    assert core.connections(T0) == [] and core.conn_count() == 0
    assert core.counters()["conn_new"] == 0
    # the file is sparse: a 4096-entry table and its slots, barely touched
    st = os.stat(state_file)
    assert st.st_blocks * 512 < st.st_size


def test_the_python_core_does_not_persist(state_file):
    with pytest.raises(StateError, match="pure-Python"):
        pyfastpath.Core(state_path=state_file)


def test_state_survives_an_edit_then_a_restart(state_file):
    """Slots edited in place before a restart come back as edited (weights are config, but
    the counters stay with the slot through both)."""
    core = _fastpath.Core(state_path=state_file, **SIZES)
    cfg = the_config()
    core.publish(cfg)
    for port in PORTS[:3]:
        core.process(from_client(port, "S", payload=b""), IF_CLIENT, T0)
    edited = copy.deepcopy(cfg)
    edited.services[0].dests[0].weight = 4
    core.publish(edited)
    conns = [d.stats.conns for d in core.services()[0].dests]
    del core
    again = _fastpath.Core(state_path=state_file, **SIZES)
    again.publish(edited)
    assert [d.stats.conns for d in again.services()[0].dests] == conns
    assert [d.weight for d in again.services()[0].dests] == [4, 1, 1]
    assert model.Forward.MASQ == again.services()[0].dests[0].fwd


def test_ipv6_connections_are_adopted(state_file):
    """The IPv6 side array (addresses of IPv6 entries) and the peers come back too."""
    from scapy.all import IPv6, TCP, Ether, raw
    from tests.unit.golden import (ADDRS, CLIENT_MAC, DIR_CLIENT_MAC, DIR_SERVER_MAC, RS_MACS,
                                   make_config, make_service)
    a = ADDRS[model.AF_INET6]
    cfg = make_config([make_service(af=model.AF_INET6, fwd=model.Forward.MASQ, ndests=2,
                                    scheduler="rr")])

    def frame(sport, flags):
        return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC) / IPv6(src=a["client"], dst=a["vip"])
                   / TCP(sport=sport, dport=80, flags=flags))

    first = _fastpath.Core(state_path=state_file, **SIZES)
    first.publish(cfg)
    chosen = {}
    for port in (57000, 57001):
        verdict, out, _ = first.process(frame(port, "S"), IF_CLIENT, T0)
        chosen[port] = str(IPv6(out[14:]).dst)
    assert sorted(chosen.values()) == sorted(a["rs"])
    rows = first.connections(T0)
    del first
    second = _fastpath.Core(state_path=state_file, **SIZES)
    second.publish(cfg)
    assert second.connections(T0) == rows
    for port, rs in chosen.items():
        verdict, out, ifindex = second.process(frame(port, "A"), IF_CLIENT, T0 + 1)
        expected = raw(Ether(src=DIR_SERVER_MAC, dst=RS_MACS[a["rs"].index(rs)])
                       / IPv6(src=a["client"], dst=rs, hlim=63) / TCP(sport=port, dport=80, flags="A"))
        assert (verdict, out, ifindex) == (TX, expected, IF_SERVERS)
        reply = raw(Ether(src=RS_MACS[a["rs"].index(rs)], dst=DIR_SERVER_MAC)
                    / IPv6(src=rs, dst=a["client"]) / TCP(sport=80, dport=port, flags="SA"))
        to_client = raw(Ether(src=DIR_CLIENT_MAC, dst=CLIENT_MAC)
                        / IPv6(src=a["vip"], dst=a["client"], hlim=63) / TCP(sport=80, dport=port, flags="SA"))
        assert second.process(reply, IF_SERVERS, T0 + 1) == (TX, to_client, IF_CLIENT)


@pytest.mark.parametrize("seed", range(6))
def test_random_restarts_keep_the_table(state_file, seed):
    """Random publishes, packets and expiries, with the core closed and the file adopted again
    at random points: what the core lists, counts and counts per real server is the same
    across every restart, and the slots' reference counts always match the table."""
    import random
    from tests.unit.test_core_deltas import observe, random_config, random_frame
    rng = random.Random(seed)
    core = _fastpath.Core(state_path=state_file, **SIZES)
    cfg = random_config(rng)
    core.publish(cfg)
    now = 1.0
    for step in range(300):
        roll = rng.random()
        if roll < 0.06:
            cfg = random_config(rng)
            core.publish(cfg)
        elif roll < 0.09:
            now += rng.choice([1, 5, 30, 400])
            core.expire(now, budget=0)
        elif roll < 0.12:
            before = observe(core, now)
            del core
            core = _fastpath.Core(state_path=state_file, **SIZES)
            core.publish(cfg)
            assert observe(core, now) == before, step
        else:
            frame, ifindex = random_frame(rng)
            core.process(frame, ifindex, now)
        slots = core._slots()["dests"]
        assert sum(refs for _, refs, _ in slots.values()) == len(core._entries()), step
        assert core.conn_count() == len(core.connections(now)), step
