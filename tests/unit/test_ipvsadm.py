"""ipvsadm's parser and formatter, piece by piece (the replay test covers whole scenarios)."""
import io

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.args import ServiceArgs
from lvsuser.control.ipvsadm.command import parse_command
from lvsuser.control.ipvsadm.constants import CMD_ADD, FMT_EXACT
from lvsuser.control.ipvsadm.errors import IpvsadmExit, ipvs_strerror
from lvsuser.control.ipvsadm.output import largenum
from lvsuser.control.ipvsadm.qsort import compare_services, glibc_qsort
from lvsuser.control.ipvsadm.resolver import NumericResolver, Resolver
from lvsuser.control.ipvsadm.usage import version_text
from lvsuser.control.ipvsadm.values import parse_service


def run(args, backend=None, stdin=""):
    backend = backend if backend is not None else TableBackend()
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(args, backend, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                      resolver=NumericResolver())
    return rc, out.getvalue(), err.getvalue()


def parse(*args):
    return parse_command(["ipvsadm", *args], NumericResolver())


# --- popt -----------------------------------------------------------------------------------
def test_short_options_cluster_and_take_glued_arguments():
    ce = parse("-At198.18.0.1:80", "-srr", "-p")
    assert ce.cmd == CMD_ADD and ce.svc.port == 80 and ce.svc.sched_name == "rr"
    assert ce.svc.timeout == 360  # a bare -p: libipvs's IPVS_SVC_PERSISTENT_TIMEOUT


def test_long_options_with_equals_and_optional_argument():
    ce = parse("--add-service", "--tcp-service=198.18.0.1:80", "--persistent=90")
    assert ce.svc.timeout == 90
    # -p's argument is the next word unless that word starts with '-'
    assert parse("-A", "-t", "198.18.0.1:80", "-p", "45").svc.timeout == 45
    assert parse("-A", "-p", "-t", "198.18.0.1:80").svc.timeout == 360


def test_a_required_argument_is_taken_even_if_it_looks_like_an_option():
    with pytest.raises(IpvsadmExit) as info:
        parse("-A", "-t", "-s")
    assert info.value.stderr == "illegal virtual server address[:port] specified\n"


@pytest.mark.parametrize("args, code, stderr", [
    (["-Ln=x"], 255, "-Ln=x: option does not take an argument\n"),
    (["-L", "--numeric=1"], 255, "--numeric=1: option does not take an argument\n"),
    (["-L", "-nq"], 255, "-nq: unknown option\n"),
    (["-L", "-L"], 2, "invalid option `-L'\n"),
    (["-A", "-t", "198.18.0.1:80", "--", "-s"], 2, "unexpected argument -s\n"),
    (["-n", "-L"], 255, "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"),
    (["--set", "1", "2"], 2, "--set option requires 3 timeout values\n"),
    (["-Z", "-t", "198.18.0.1:80", "-n"], 2, "Illegal 'numeric' option with the 'zero' command\n"),
    (["-L", "-c", "--timeout"], 2,
     "The option 'timeout' conflicts with the 'connection' option in the 'list' command\n"),
    (["-L", "--timeout", "--persistent-conn"], 2, "options conflicts in the list command\n"),
    (["-A", "-t", "198.18.0.1:80", "-b", "sh-port"], 2, "incompatible scheduler flag `sh-port'\n"),
])
def test_parse_errors(args, code, stderr):
    assert run(args) == (code, "", stderr)


def test_help_and_version_go_to_stdout():
    rc, out, err = run(["-h"])
    assert rc == 0 and err == ""
    assert out.startswith("ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\nUsage:\n")
    assert "  --mcast-ttl ttl                     Multicast TTL (default=1)\n" in out
    assert run(["--version"]) == (0, version_text(), "")


# --- addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, result, af, port", [
    ("198.18.0.1:80", 3, model.AF_INET, 80),
    ("198.18.0.1", 1, model.AF_INET, 0),
    ("[2001:db8::1]:443", 3, model.AF_INET6, 443),
    ("2001:db8::1", 1, model.AF_INET6, 0),
    ("[198.18.0.1]:80", 1, model.AF_INET, 0),  # ipvsadm drops the port here
    ("[2001:db8::1]", 0, 0, 0),
    ("8080", 0, 0, 0),
    ("198.18.0.1:65536", 0, model.AF_INET, 0),
    ("0xc6120001:80", 3, model.AF_INET, 80),  # inet_aton's other spellings
])
def test_parse_service(text, result, af, port):
    svc = ServiceArgs()
    svc.protocol = model.IPPROTO_TCP
    assert parse_service(text, svc, NumericResolver()) == result
    if result:
        assert (svc.af, svc.port) == (af, port)


def test_dest_port_comes_from_the_service_for_dr_and_tunnel():
    ce = parse("-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1:8080", "-g")
    assert ce.dest.port == 80
    ce = parse("-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1:8080", "-m")
    assert ce.dest.port == 8080
    ce = parse("-a", "-r", "198.18.1.1", "-m", "-t", "198.18.0.1:80")
    assert ce.dest.port == 0  # -r before -t saw no service port yet, as in ipvsadm


def test_netmask_forms():
    assert parse("-A", "-t", "198.18.0.1:80", "-p", "-M", "255.255.255.0").svc.netmask == 0xFFFFFF00
    assert parse("-A", "-t", "[2001:db8::1]:80", "-p", "-M", "64abc").svc.netmask == 64  # atoi


# --- formatting ---------------------------------------------------------------------------------
def test_sorting_reproduces_the_32_bit_wrap_of_libipvs():
    table = TableBackend()
    for line in ("-A -t 10.0.0.1:80", "-A -t 200.0.0.1:80", "-A -t 100.0.0.1:80"):
        assert run(line.split(), table)[0] == 0
    run("-D -t 100.0.0.1:80".split(), table)
    out = run(["-Sn"], table)[1]
    # 10.0.0.1 - 200.0.0.1 wraps to a positive int: ipvsadm lists 200.0.0.1 first
    assert [l.split()[2] for l in out.splitlines()] == ["200.0.0.1:80", "10.0.0.1:80"]
    assert compare_services(*[s for s in table.get_services()
                                      if str(s.addr) == "10.0.0.1"] * 2) == 0


def test_glibc_qsort_is_a_stable_merge_sort():
    items = [(3, "a"), (1, "b"), (3, "c"), (1, "d"), (2, "e")]
    assert glibc_qsort(items, lambda x, y: x[0] - y[0]) == sorted(items, key=lambda i: i[0])


@pytest.mark.parametrize("value, exact, text", [
    (0, False, "        0"), (99999999, False, " 99999999"), (123456789, False, "  123456K"),
    (12345678901, False, "   12345M"), (123456789012345, False, "     123T"),
    (123456789012345, True, " 123456789012345"), (5, True, "        5"),
])
def test_largenum(value, exact, text):
    assert largenum(value, FMT_EXACT if exact else 0) == text


def test_listing_with_counters_and_connections():
    class LiveTable(TableBackend):
        def _fill_live_state(self, services):
            for svc in services:
                svc.stats = model.Stats(conns=1234567890, inpkts=5, outpkts=6, inbytes=7,
                                        outbytes=8, cps=1, inpps=2, outpps=3, inbps=4, outbps=5)
                for dest in svc.dests:
                    dest.activeconns, dest.inactconns, dest.persistconns = 3, 4, 5

        def get_connections(self):
            return [{"protocol": "TCP", "caddr": "198.18.9.9", "cport": 40000,
                     "vaddr": "198.18.0.1", "vport": 80, "daddr": "198.18.1.1", "dport": 80,
                     "state": "ESTABLISHED", "expires": 899, "pe_name": "", "pe_data": ""},
                    {"protocol": "UDP", "caddr": "2001:db8::9", "cport": 5060,
                     "vaddr": "2001:db8::1", "vport": 5060, "daddr": "2001:db8:1::1",
                     "dport": 5060, "state": "UDP", "expires": 61, "pe_name": "sip",
                     "pe_data": "call-id"}]

    table = LiveTable()
    run("-A -t 198.18.0.1:80 -s rr".split(), table)
    run("-a -t 198.18.0.1:80 -r 198.18.1.1 -m".split(), table)
    assert run(["-Ln"], table)[1].splitlines()[-1] == (
        "  -> 198.18.1.1:80                Masq    1      3          4         ")
    assert run(["-Ln", "--stats"], table)[1].splitlines()[3] == (
        f"{'TCP  198.18.0.1:80':<33}    1234M        5        6        7        8")
    assert run(["-Ln", "--persistent-conn"], table)[1].splitlines()[-1] == (
        "  -> 198.18.1.1:80                1         5           3          4         ")
    assert run(["-Lnc"], table)[1] == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:59  ESTABLISHED 198.18.9.9:40000   198.18.0.1:80      198.18.1.1:80\n"
        "UDP 01:01  UDP         [2001:db8::9]:5060 [2001:db8::1]:5060 [2001:db8:1::1]:5060\n")
    assert run(["-Lnc", "--persistent-conn"], table)[1].splitlines()[-1] == (
        "UDP 01:01  UDP         [2001:db8::9]:5060 [2001:db8::1]:5060 [2001:db8:1::1]:5060 "
        "sip                call-id")


def test_names_are_resolved_without_n():
    class Names(Resolver):
        def addr_to_host(self, af, packed):
            return "vip.example" if packed == bytes([198, 18, 0, 1]) else None

        def port_to_service(self, port, proto):
            return "http" if (port, proto) == (80, "tcp") else None

    table = TableBackend()
    run("-A -t 198.18.0.1:80".split(), table)
    out = io.StringIO()
    assert ipvsadm.main(["-S"], table, stdout=out, stderr=io.StringIO(), resolver=Names()) == 0
    assert out.getvalue() == "-A -t vip.example:http -s wlc\n"


def test_unreachable_director_names_the_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "nothing.sock")
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(["--control", path, "-Ln"], stdout=out, stderr=err)
    assert rc == 2 and out.getvalue() == ""
    assert err.getvalue() == (f"Can't initialize ipvs: cannot connect to {path}: No such file or "
                              "directory\nAre you sure that the lvsuser director is running "
                              "(lvsuser run)?\n")
    monkeypatch.setenv("LVSUSER_CONTROL", path)
    err = io.StringIO()
    assert ipvsadm.main(["-A", "-t", "198.18.0.1:80"], stdout=io.StringIO(), stderr=err) == 2
    assert path in err.getvalue()
    # parse errors and help need no director
    assert ipvsadm.main(["-h"], stdout=io.StringIO(), stderr=io.StringIO()) == 0


def test_ipvs_strerror_falls_back_to_strerror():
    assert ipvs_strerror("add_dest", 34) == "Numerical result out of range"
    assert ipvs_strerror("del_dest", 2) == "No such destination"
    assert ipvs_strerror("add_service", 2) == "Scheduler or persistence engine not found"
