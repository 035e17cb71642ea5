"""Rules files: ipvsadm -S output restores the same table; a bad line changes nothing."""
import io
import ipaddress

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control import rules
from lvsuser.control.ipvsadm.resolver import NumericResolver

SETUP = [
    "-A -t 198.18.0.1:80 -s rr",
    "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m",
    "-a -t 198.18.0.1:80 -r 198.18.1.2:8080 -m -w 2 -x 10 -y 2",
    "-A -u 198.18.0.1:53 -s wlc -p 60 -M 255.255.255.0",
    "-a -u 198.18.0.1:53 -r 198.18.1.1 -g -w 0",
    "-A -t 198.18.0.2:443 -s sh -b sh-fallback,sh-port -p 300",
    "-a -t 198.18.0.2:443 -r 198.18.1.3 -i --tun-type gue --tun-port 6080 --tun-csum",
    "-a -t 198.18.0.2:443 -r 198.18.1.4 -i --tun-type gre --tun-nocsum",
    "-A -f 5 -s mh -b mh-port",
    "-a -f 5 -r 198.18.1.4 -g",
    "-A -t [2001:db8::1]:80 -s lc -p 30 -M 64",
    "-a -t [2001:db8::1]:80 -r [2001:db8:1::1]:80 -m",
    "-A -f 6 -6 -s rr -o",
    "-a -f 6 -6 -r 2001:db8:1::2 -g",
    "-a -f 6 -6 -r 198.18.1.9 -i",
]


def run(backend, line, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(line.split(), backend, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                      resolver=NumericResolver())
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def table():
    backend = TableBackend()
    for line in SETUP:
        assert run(backend, line) == (0, "", ""), line
    return backend


def test_save_clear_restore_gives_the_same_table(table):
    rc, saved, _ = run(table, "-Sn")
    assert rc == 0 and saved.count("\n") == len(SETUP)
    before = table.get_services()
    assert run(table, "-C") == (0, "", "")
    assert table.get_services() == []
    assert run(table, "-R", stdin=saved) == (0, "", "")
    assert run(table, "-Sn")[1] == saved
    # same services, settings and dests (kernel dump order may differ in dest order: newest first)
    after = table.get_services()
    assert [(s.key, s.scheduler, s.flags, s.timeout, s.netmask) for s in after] == [
        (s.key, s.scheduler, s.flags, s.timeout, s.netmask) for s in before]
    assert [sorted((str(d.addr), d.port, d.weight, d.fwd) for d in s.dests) for s in after] == [
        sorted((str(d.addr), d.port, d.weight, d.fwd) for d in s.dests) for s in before]


@pytest.mark.parametrize("bad, line, message", [
    ("-A -t 198.18.0.9:80 -s nosuch", 3, "Scheduler or persistence engine not found"),
    ("-A -t 198.18.0.1:80 -s rr", 3, "Service already exists"),
    ("-a -t 198.18.0.9:80 -r 198.18.1.1 -m", 3, "Service not defined"),
    ("-A -t 198.18.0.300:80", 3, "illegal virtual server address[:port] specified"),
    ("-L -n", 3, "only table-changing commands are allowed here"),
    ("--mark x -t 198.18.0.1", 3, "bad mark rule: invalid mark `x'"),
])
def test_a_bad_line_is_named_and_changes_nothing(table, bad, line, message):
    before = table.get_services()
    text = "-A -t 198.18.0.7:80 -s rr\n\n" + bad + "\n-A -t 198.18.0.8:80 -s rr\n"
    rc, out, err = run(table, "-R", stdin=text)
    assert rc != 0 and out == ""
    assert err == f"{message}\nipvsadm: line {line} of the rules was refused; no rule was applied\n"
    assert table.get_services() == before


def test_comments_ipvsadm_words_and_blank_lines():
    ops = rules.parse_rules("# header\n\n  \nipvsadm -A -t 198.18.0.1:80 -s rr\r\n"
                            "\t-a\t-t 198.18.0.1:80 -r 198.18.1.1 -m\n")
    assert [(o.line, o.op) for o in ops] == [(4, "add_service"), (5, "add_dest")]


def test_mark_rule_lines_round_trip():
    text = ("--mark 1 -t 198.18.0.10/32 --dport 80\n"
            "--mark 2 198.18.0.0/24\n"
            "--mark 3 -u 2001:db8::/64 --dport 5000-5010 --source 2001:db8:9::/48\n")
    ops = rules.parse_rules(text)
    formatted = "".join(rules.format_mark_rule(o.kwargs["rule"]) + "\n" for o in ops)
    assert formatted == text
    first = ops[0].kwargs["rule"]
    assert first == model.MarkRule(mark=1, dst_net=ipaddress.ip_network("198.18.0.10/32"),
                                   protocol=model.IPPROTO_TCP, dport_lo=80, dport_hi=80)


@pytest.mark.parametrize("words, problem", [
    ([], "missing mark number"),
    (["0", "198.18.0.1"], "invalid mark"),
    (["1"], "missing destination"),
    (["1", "198.18.0.1", "--dport", "9-1"], "invalid port range"),
    (["1", "198.18.0.1", "--source", "2001:db8::/64"], "different address families"),
    (["1", "-t", "-u", "198.18.0.1"], "more than one protocol"),
])
def test_bad_mark_rules(words, problem):
    with pytest.raises(ValueError, match=problem):
        rules.parse_mark_rule(words)


def test_save_lists_mark_rules_after_services(table):
    run(table, "-C")
    run(table, "-A -f 1 -s rr")
    assert run(table, "-R", stdin="--mark 1 -t 198.18.0.10 --dport 80\n")[0] == 0
    assert run(table, "-Sn")[1] == "-A -f 1 -s rr\n--mark 1 -t 198.18.0.10/32 --dport 80\n"


def test_restore_inside_restore_is_refused(table):
    rc, out, err = run(table, "-R", stdin="-R\n")
    assert rc == 255 and "line 1" in err


def test_a_batch_refused_as_a_whole_is_reported_without_a_line():
    import errno

    class RefusesBatches(TableBackend):
        def apply_batch(self, operations):
            raise model.IPVSError(errno.EMSGSIZE, "request too long")

    rc, out, err = run(RefusesBatches(), "-R", stdin="-A -t 198.18.0.1:80 -s rr\n")
    assert rc == 255
    assert err == ("the director refused the rules: request too long\n"
                   "ipvsadm: the rules were refused; no rule was applied\n")
