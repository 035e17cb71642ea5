"""A rule change from the command line imports only what it needs, and says the same thing on
the wire as the model would.

``lvsuser ipvsadm -e ...`` is run by health checkers thousands of times: its cost is mostly
the imports.  The parser sends the wire form of its arguments without importing the model; here
the wire form is checked against ``protocol.encode`` of the model objects the arguments stand
for, and a real process is checked for what it imported.
"""
import os
import socket
import subprocess
import sys

import pytest

import lvsuser
from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import protocol
from lvsuser.control.ipvsadm.command import parse_command, table_operation, wire_operation
from lvsuser.control.ipvsadm.resolver import NumericResolver
from lvsuser.control.server import ControlServer

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(lvsuser.__file__)))

COMMANDS = [
    ["-A", "-t", "198.18.0.1:80", "-s", "rr", "-p", "60", "-M", "255.255.255.0"],
    ["-A", "-u", "[2001:db8::1]:53", "-s", "sh", "-b", "sh-port,sh-fallback", "-o"],
    ["-A", "-f", "7", "-6", "-s", "wlc", "--pe", "sip"],
    ["-E", "-t", "198.18.0.1:80", "-s", "wrr"],
    ["-D", "-f", "9"],
    ["-C"],
    ["-Z"],
    ["-Z", "-t", "198.18.0.1:80"],
    ["-a", "-t", "198.18.0.1:80", "-r", "198.18.0.2:8080", "-m", "-w", "3", "-x", "10", "-y", "2"],
    ["-a", "-t", "198.18.0.1:80", "-r", "198.18.0.3", "-g"],
    ["-a", "-f", "7", "-r", "198.18.0.4", "-i", "--tun-type", "gue", "--tun-port", "6080",
     "--tun-csum"],
    ["-a", "-t", "[2001:db8::1]:443", "-r", "[2001:db8::2]:8443", "-m"],
    ["-e", "-u", "198.18.0.1:53", "-r", "198.18.0.5", "-w", "0"],
    ["-d", "-t", "198.18.0.1:80", "-r", "198.18.0.2:8080"],
    ["--set", "10", "20", "30"],
]


def text(packed):
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def model_operation(ce):
    """What the arguments mean, built from the model directly (as ipvsadm.py did before)."""
    svc = ce.svc
    af = svc.af
    zero = "::" if af == model.AF_INET6 else "0.0.0.0"
    addr = model.parse_ip(text(svc.addr) if svc.addr else zero)
    key = (model.ServiceKey(af=af, fwmark=svc.fwmark) if svc.fwmark else
           model.ServiceKey(af=af, protocol=svc.protocol, addr=addr, port=svc.port))
    service = model.Service(af=af, protocol=svc.protocol, addr=None if svc.fwmark else addr,
                            port=svc.port, fwmark=svc.fwmark, scheduler=svc.sched_name,
                            flags=svc.flags, timeout=svc.timeout, netmask=svc.netmask,
                            pe_name=svc.pe_name)
    d = ce.dest
    daddr = model.parse_ip(text(d.addr) if d.addr else "0.0.0.0")
    dest = model.Dest(addr=daddr, port=d.port, fwd=model.Forward(d.conn_flags & 7), weight=d.weight,
                      u_threshold=d.u_threshold, l_threshold=d.l_threshold,
                      tun_type=model.TunType(d.tun_type), tun_port=d.tun_port,
                      tun_flags=d.tun_flags, af=model.af_of(daddr))
    return key, service, dest


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_wire_form_is_what_the_model_encodes_to(words):
    ce = parse_command(["ipvsadm", *words], NumericResolver())
    op, wire_args = wire_operation(ce)
    op2, model_args = table_operation(ce)
    assert op == op2
    if op == "set_timeouts":
        assert model_args == {"timeouts": model.Timeouts(10, 20, 30)}
        return
    if op == "flush":
        assert wire_args == {} == model_args
        return
    key, service, dest = model_operation(ce)
    expected = {"add_service": {"svc": service}, "edit_service": {"svc": service},
                "del_service": {"key": key}, "add_dest": {"key": key, "dest": dest},
                "edit_dest": {"key": key, "dest": dest}, "del_dest": {"key": key, "dest": dest},
                "zero": {"key": key if "-t" in words else None}}[op]
    assert model_args == expected
    # decoding what travels gives the same objects as encoding them would have sent
    assert protocol.decode(protocol.encode(expected)) == protocol.decode(wire_args)


HEAVY = ("lvsuser.model", "dataclasses", "ipaddress", "typing", "lvsuser.backends.base",
         "lvsuser.control.client", "lvsuser.control.ipvsadm.output", "pyroute2")


def test_a_rule_change_imports_little_and_changes_the_table(tmp_path):
    backend = TableBackend()
    backend.add_service(model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                                      addr=model.parse_ip("198.18.0.1"), port=80, scheduler="rr"))
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, backend).start()
    script = ("import sys\n"
              "from lvsuser.cli import main\n"
              "rc = main(['ipvsadm', '-a', '-t', '198.18.0.1:80', '-r', '198.18.0.2', '-m',"
              " '-w', '3', '--control', sys.argv[1]])\n"
              "print(' '.join(sorted(sys.modules)))\n"
              "sys.exit(rc)\n")
    try:
        # -S: no site, so nothing but lvsuser's own imports show (site may import typing etc.)
        done = subprocess.run([sys.executable, "-S", "-c", script, path], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": CHECKOUT})
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    assert "lvsuser.control.ipvsadm.command" in modules  # the check sees the real thing
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    dests = backend.get_services()[0].dests
    assert [(str(d.addr), d.port, d.fwd, d.weight) for d in dests] == [
        ("198.18.0.2", 80, model.Forward.MASQ, 3)]


def test_the_parsers_kernel_constants_are_the_models():
    from lvsuser.control.ipvsadm import constants

    for name in ("AF_INET", "AF_INET6", "IPPROTO_TCP", "IPPROTO_UDP", "IPPROTO_SCTP",
                 "PROTOCOL_NAMES", "SVC_F_PERSISTENT", "SVC_F_ONEPACKET", "SVC_F_SCHED1",
                 "SVC_F_SCHED2", "SVC_F_SCHED3", "TUN_FLAG_NOCSUM", "TUN_FLAG_CSUM",
                 "TUN_FLAG_REMCSUM", "IPVS_VERSION"):
        assert getattr(constants, name) == getattr(model, name), name
    assert constants.CONN_F_MASQ == model.Forward.MASQ
    assert constants.CONN_F_DROUTE == model.Forward.ROUTE
    assert constants.CONN_F_TUNNEL == model.Forward.TUNNEL
