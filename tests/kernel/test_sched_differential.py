"""Kernel IPVS versus our schedulers, connection by connection.

In the QEMU guest (tools/ipvs_vm.py) three namespaces are built: ``cli`` (clients
198.18.2.1-40), ``dir`` (the director: kernel IPVS on VIP 198.18.0.10:80, NAT) and ``rs`` (real
servers 198.18.1.11-30, one TCP listener that answers each connection with the address it was
accepted on).  Each scenario creates a service with one scheduler and runs a script of steps:
adding, editing (weights, thresholds) and deleting dests, and connections from chosen clients that
are held open or closed.  Before every connection the guest records the kernel's dest list
(order, weights, ActiveConn, InActConn, from /proc/net/ip_vs) and after it the real server the
kernel picked.

On the host the same steps are replayed on the Python twin and on the C scheduler, with each
dest's counters set to what the kernel had at that moment (the OVERLOAD flag derived from the
upper threshold as ip_vs_bind_dest sets it), and every decision must equal the kernel's.

The guest kernel is Debian's 6.1, which has no twos scheduler (added in 6.2): twos is checked
statistically in tests/unit only.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import socket
import subprocess
import threading
import time

import pytest

VIP = "198.18.0.10"
RS_NET = "198.18.1."
CLIENT_NET = "198.18.2."
# The same topology in IPv6, for the scenarios with "af": 6 (address folding in sh/mh).
VIP6 = "2001:db8::10"
RS_NET6 = "2001:db8:1::"
CLIENT_NET6 = "2001:db8:2::"


def _addrs(scenario):
    """(vip, real-server prefix, client prefix) of a scenario's address family."""
    if scenario.get("af") == 6:
        return VIP6, RS_NET6, CLIENT_NET6
    return VIP, RS_NET, CLIENT_NET


def _host(prefix, n):
    return f"{prefix}{n:x}" if ":" in prefix else f"{prefix}{n}"


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

# Steps: ("add", rs, weight[, upper_threshold]), ("edit", rs, weight), ("del", rs),
#        ("conn", client, "hold" | "close"); rs n is 198.18.1.n, client n is 198.18.2.n.


def _conns(clients, mode="close"):
    return [("conn", c, mode) for c in clients]


def _scenarios():
    many = list(range(1, 31))
    hold_close = [("conn", c, "hold" if c % 3 else "close") for c in range(1, 19)]
    return [
        {"name": "rr", "scheduler": "rr", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), *_conns([1, 2, 3, 4]),
            ("del", 12), *_conns([5, 6, 7]), ("add", 14, 1), *_conns([8, 9, 10]),
            ("edit", 13, 0), *_conns([11, 12, 13]), ("del", 11), ("del", 14), *_conns([14, 15])]},
        {"name": "rr-persistent", "scheduler": "rr", "persistent": 300, "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), *_conns([1, 2, 1, 3, 2, 4, 1, 5])]},
        {"name": "wrr", "scheduler": "wrr", "steps": [
            ("add", 13, 2), ("add", 12, 3), ("add", 11, 4), *_conns(range(1, 12)),
            ("edit", 13, 6), *_conns(range(12, 22)), ("add", 14, 2), *_conns(range(22, 28)),
            ("del", 11), *_conns(range(28, 34)), ("edit", 12, 0), ("edit", 13, 0),
            ("edit", 14, 0), *_conns([34])]},
        {"name": "lc", "scheduler": "lc", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 5), *hold_close]},
        {"name": "wlc", "scheduler": "wlc", "steps": [
            ("add", 11, 1), ("add", 12, 2), ("add", 13, 3, 4), *hold_close,
            ("edit", 12, 0), *[("conn", c, "hold") for c in range(19, 24)]]},
        {"name": "sed", "scheduler": "sed", "steps": [
            ("add", 11, 1), ("add", 12, 3), ("add", 13, 2), *hold_close]},
        {"name": "nq", "scheduler": "nq", "steps": [
            ("add", 11, 1), ("add", 12, 3), ("add", 13, 2), *hold_close]},
        {"name": "fo", "scheduler": "fo", "steps": [
            ("add", 11, 2), ("add", 12, 5), ("add", 13, 5), *hold_close[:4], ("edit", 13, 1),
            *hold_close[4:8], ("edit", 12, 0), *hold_close[8:12]]},
        {"name": "ovf", "scheduler": "ovf", "steps": [
            ("add", 11, 1), ("add", 12, 3), ("add", 13, 2),
            *[("conn", c, "hold") for c in range(1, 10)]]},
        {"name": "lblc", "scheduler": "lblc", "steps": [
            ("add", 11, 2), ("add", 12, 2), ("add", 13, 2),
            *[("conn", c, "hold") for c in range(1, 10)], ("del", 13), *_conns([10, 11])]},
        {"name": "lblcr", "scheduler": "lblcr", "steps": [
            ("add", 11, 2), ("add", 12, 2), ("add", 13, 2),
            *[("conn", c, "hold") for c in range(1, 12)]]},
        {"name": "dh", "scheduler": "dh", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), *_conns([1, 2]),
            ("del", 12), *_conns([3]), ("add", 14, 1), ("add", 15, 1), *_conns([4, 5])]},
        {"name": "sh", "scheduler": "sh", "steps": [
            ("add", 11, 1), ("add", 12, 2), ("add", 13, 1), *_conns(many)]},
        {"name": "sh-zero", "scheduler": "sh", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), ("edit", 12, 0), *_conns(range(1, 16))]},
        {"name": "sh-fallback-port", "scheduler": "sh", "sched_flags": "sh-fallback,sh-port",
         "steps": [("add", 11, 1), ("add", 12, 1), ("add", 13, 1), ("edit", 13, 0),
                   *_conns([1] * 12 + [2] * 6)]},
        {"name": "mh", "scheduler": "mh", "steps": [
            ("add", 11, 1), ("add", 12, 3), ("add", 13, 1), *_conns(many),
            ("del", 12), *_conns(range(1, 11))]},
        {"name": "mh-fallback", "scheduler": "mh", "sched_flags": "mh-fallback", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), ("edit", 11, 0), *_conns(range(1, 21))]},
        {"name": "mh-port", "scheduler": "mh", "sched_flags": "mh-port", "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 2), *_conns([3] * 15)]},
        {"name": "sh-ipv6", "scheduler": "sh", "af": 6, "steps": [
            ("add", 11, 1), ("add", 12, 2), ("add", 13, 1), *_conns(many)]},
        {"name": "mh-ipv6", "scheduler": "mh", "af": 6, "steps": [
            ("add", 11, 1), ("add", 12, 1), ("add", 13, 1), *_conns(many)]},
        {"name": "wlc-ipv6", "scheduler": "wlc", "af": 6, "steps": [
            ("add", 11, 1), ("add", 12, 2), ("add", 13, 3), *hold_close]},
    ]


# --------------------------------------------------------------------------------------------
# The guest side (runs inside the QEMU guest, as root in its own kernel)

CLONE_NEWNET = 0x40000000
_libc = None


def _setns(path):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def _build_topology():
    for ns in ("cli", "dir", "rs"):
        _sh("ip", "netns", "add", ns)
    _sh("ip", "link", "add", "c0", "netns", "cli", "type", "veth", "peer", "d0", "netns", "dir")
    _sh("ip", "link", "add", "r0", "netns", "rs", "type", "veth", "peer", "d1", "netns", "dir")
    run = lambda ns, *args: _sh("ip", "netns", "exec", ns, *args)  # noqa: E731
    run("dir", "ip", "addr", "add", "198.18.0.1/24", "dev", "d0")
    run("dir", "ip", "addr", "add", VIP + "/32", "dev", "d0")
    run("dir", "ip", "addr", "add", RS_NET + "1/24", "dev", "d1")
    for ns, dev in (("dir", "d0"), ("dir", "d1"), ("cli", "c0"), ("rs", "r0"),
                    ("dir", "lo"), ("cli", "lo"), ("rs", "lo")):
        run(ns, "ip", "link", "set", dev, "up")
    run("dir", "ip", "route", "add", CLIENT_NET + "0/24", "via", "198.18.0.2")
    run("dir", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run("cli", "ip", "addr", "add", "198.18.0.2/24", "dev", "c0")
    for n in range(1, 41):
        run("cli", "ip", "addr", "add", f"{CLIENT_NET}{n}/32", "dev", "c0")
    run("cli", "ip", "route", "add", "default", "via", "198.18.0.1")
    for n in range(11, 31):
        run("rs", "ip", "addr", "add", f"{RS_NET}{n}/24", "dev", "r0")
    run("rs", "ip", "route", "add", "default", "via", RS_NET + "1")
    run("dir", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    run("dir", "ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
    run("dir", "ip", "-6", "addr", "add", VIP6 + "/128", "dev", "d0", "nodad")
    run("dir", "ip", "-6", "addr", "add", RS_NET6 + "1/64", "dev", "d1", "nodad")
    run("dir", "ip", "-6", "route", "add", CLIENT_NET6 + "/64", "via", "2001:db8::2")
    run("cli", "ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "c0", "nodad")
    for n in range(1, 41):
        run("cli", "ip", "-6", "addr", "add", _host(CLIENT_NET6, n) + "/128", "dev", "c0", "nodad")
    run("cli", "ip", "-6", "route", "add", "default", "via", "2001:db8::1")
    for n in range(11, 31):
        run("rs", "ip", "-6", "addr", "add", _host(RS_NET6, n) + "/64", "dev", "r0", "nodad")
    run("rs", "ip", "-6", "route", "add", "default", "via", RS_NET6 + "1")


def _serve(listener):
    """Answer each connection with the local address it reached; close when the client does."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                local = conn.getsockname()[0].removeprefix("::ffff:")
                conn.sendall(local.encode() + b"\n")
                sel.register(conn, selectors.EVENT_READ)
            else:
                if not key.fileobj.recv(100):
                    sel.unregister(key.fileobj)
                    key.fileobj.close()


def _read_dests():
    """The kernel's dest list of the one service: [address, weight, active, inactive]."""
    import ipaddress
    dests = []
    with open("/proc/net/ip_vs") as f:
        for line in f:
            parts = line.split()
            if parts[:1] != ["->"] or parts[1] == "RemoteAddress:Port":
                continue
            if parts[1].startswith("["):   # [2001:0db8:...]:0050
                addr = str(ipaddress.ip_address(parts[1][1:parts[1].index("]")]))
            else:                          # C612010B:0050
                addr = socket.inet_ntoa(bytes.fromhex(parts[1].split(":")[0]))
            dests.append([addr, int(parts[3]), int(parts[4]), int(parts[5])])
    return dests


def _ipvsadm(*args):
    _sh("ipvsadm", *args)


def _run_scenario(scenario, own_ns):
    vip, rs_net, client_net = _addrs(scenario)
    family = socket.AF_INET6 if scenario.get("af") == 6 else socket.AF_INET
    service = ["-t", _endpoint(vip, 80)]
    create = ["-A", *service, "-s", scenario["scheduler"]]
    if scenario.get("sched_flags"):
        create += ["-b", scenario["sched_flags"]]
    if scenario.get("persistent"):
        create += ["-p", str(scenario["persistent"])]
    _ipvsadm("-C")
    _ipvsadm(*create)
    records = []
    held = []
    try:
        for step in scenario["steps"]:
            kind = step[0]
            if kind == "add":
                extra = ["-x", str(step[3])] if len(step) > 3 else []
                _ipvsadm("-a", *service, "-r", _endpoint(_host(rs_net, step[1]), 80), "-m",
                         "-w", str(step[2]), *extra)
                records.append({"step": list(step)})
            elif kind == "edit":
                _ipvsadm("-e", *service, "-r", _endpoint(_host(rs_net, step[1]), 80), "-m",
                         "-w", str(step[2]))
                records.append({"step": list(step)})
            elif kind == "del":
                _ipvsadm("-d", *service, "-r", _endpoint(_host(rs_net, step[1]), 80))
                records.append({"step": list(step)})
            else:
                client = _host(client_net, step[1])
                _setns("/run/netns/cli")
                try:
                    sock = socket.socket(family)
                finally:
                    _setns(own_ns)
                sock.settimeout(3)
                sock.bind((client, 0))
                sport = sock.getsockname()[1]
                before = _read_dests()
                now = time.monotonic()
                try:
                    sock.connect((vip, 80))
                    reached = sock.makefile().readline().strip() or None
                except OSError:
                    reached = None
                records.append({"step": list(step), "sport": sport, "dests": before,
                                "now": now, "reached": reached})
                if step[2] == "hold" and reached:
                    held.append(sock)
                else:
                    sock.close()
                    time.sleep(0.3)  # let the FIN exchange settle before the next snapshot
    finally:
        for sock in held:
            sock.close()
    return records


def guest_main():
    _build_topology()
    _setns("/run/netns/rs")
    listener = socket.socket(socket.AF_INET6)   # dual stack: v4 clients arrive as ::ffff:a.b.c.d
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 80))
    listener.listen(128)
    _setns("/run/netns/dir")
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    results = {}
    for scenario in _scenarios():
        results[scenario["name"]] = _run_scenario(scenario, "/run/netns/dir")
    _ipvsadm("-C")
    print(json.dumps(results))


# --------------------------------------------------------------------------------------------
# The host side

@pytest.fixture(scope="module")
def kernel_records(guest):
    result = guest.run(
        f"cd {guest.repo} && PYTHONPATH={guest.repo} python3 -c "
        "'from tests.kernel.test_sched_differential import guest_main; guest_main()'",
        timeout=900)
    assert result.rc == 0, result.stderr[-3000:]
    records = json.loads(result.stdout.strip().splitlines()[-1])
    dump = os.environ.get("LVSUSER_SCHED_DUMP")
    if dump:  # for looking at what the kernel did
        with open(dump, "w") as f:
            json.dump(records, f, indent=1)
    return records


SCENARIOS = {s["name"]: s for s in _scenarios()}


@pytest.mark.kernel
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scheduler_decisions_match_kernel_ipvs(kernel_records, name):
    import ipaddress

    from lvsuser import model, schedulers
    from lvsuser.schedulers.base import PacketInfo
    from tests.unit.test_sched_cases import _standalone_harness

    import lvsuser._fastpath as compiled

    csched = compiled if hasattr(compiled, "SchedHarness") else _standalone_harness()

    scenario = SCENARIOS[name]
    flags = model.SVC_F_HASHED
    for flag in filter(None, scenario.get("sched_flags", "").split(",")):
        flags |= {"sh-fallback": model.SVC_F_SCHED1, "mh-fallback": model.SVC_F_SCHED1,
                  "sh-port": model.SVC_F_SCHED2, "mh-port": model.SVC_F_SCHED2}[flag]
    if scenario.get("persistent"):
        flags |= model.SVC_F_PERSISTENT
    vip_text, rs_net, client_net = _addrs(scenario)
    vip = ipaddress.ip_address(vip_text)
    af = model.af_of(vip)
    svc = model.Service(af=af, protocol=model.IPPROTO_TCP, addr=vip, port=80,
                        scheduler=scenario["scheduler"], flags=flags,
                        netmask=128 if af == model.AF_INET6 else model.DEFAULT_NETMASK_V4)
    py = schedulers.create(scenario["scheduler"], svc)
    c = csched.SchedHarness(scenario["scheduler"], svc)
    templates = {}
    decisions = 0
    records = kernel_records[name]
    assert len(records) == len(scenario["steps"])
    for record in records:
        step = record["step"]
        if step[0] == "add":
            dest = model.Dest(addr=ipaddress.ip_address(_host(rs_net, step[1])), port=80, af=af,
                              fwd=model.Forward.MASQ, weight=step[2],
                              u_threshold=step[3] if len(step) > 3 else 0)
            svc.dests.insert(0, dest)
        elif step[0] == "edit":
            svc.find_dest(ipaddress.ip_address(_host(rs_net, step[1])), 80).weight = step[2]
        elif step[0] == "del":
            svc.dests.remove(svc.find_dest(ipaddress.ip_address(_host(rs_net, step[1])), 80))
        if step[0] != "conn":
            py.update()
            c.update(svc)
            continue
        # The kernel's list, counters and weights at this moment, in its order.
        assert [d[0] for d in record["dests"]] == [str(d.addr) for d in svc.dests], \
            "dest list order differs from the kernel's (newest first)"
        for dest, (_, weight, active, inactive) in zip(svc.dests, record["dests"]):
            assert dest.weight == weight
            dest.activeconns, dest.inactconns = active, inactive
            overloaded = dest.u_threshold and active + inactive >= dest.u_threshold
            dest.flags = model.DEST_F_AVAILABLE | (model.DEST_F_OVERLOAD if overloaded else 0)
        client = ipaddress.ip_address(_host(client_net, step[1]))
        if scenario.get("persistent") and client in templates:
            assert record["reached"] == templates[client]  # the template, not the scheduler
            continue
        pkt = PacketInfo(af, model.IPPROTO_TCP, client, record["sport"], vip, 80)
        c.refresh(svc)
        py_dest = py.schedule(pkt, record["now"])
        c_index = c.schedule(af, model.IPPROTO_TCP, client, record["sport"], vip, 80, record["now"])
        py_addr = str(py_dest.addr) if py_dest else None
        c_addr = str(svc.dests[c_index].addr) if c_index >= 0 else None
        where = f"{name}: connection from {client}:{record['sport']} with dests {record['dests']}"
        assert py_addr == record["reached"], where
        assert c_addr == record["reached"], where
        templates[client] = record["reached"]
        decisions += 1
    # The scenario exercised something: several dests were reached (dh hashes one VIP only),
    # and "no dest" happened where the steps make it happen.
    reached = [r["reached"] for r in records if r["step"][0] == "conn"]
    assert decisions >= 3
    if scenario["scheduler"] != "dh":
        assert len(set(reached) - {None}) >= 2
    assert (None in reached) == (name in ("rr", "wrr", "sh-zero"))
