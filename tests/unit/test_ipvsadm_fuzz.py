"""Any command line: ipvsadm's exit codes only, never a traceback; a refusal changes nothing."""
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.resolver import NumericResolver

WORDS = ["-A", "-E", "-D", "-C", "-a", "-e", "-d", "-L", "-l", "-Z", "-S", "-n", "-c", "--set",
         "-t", "-u", "-f", "-s", "-p", "-M", "-r", "-m", "-g", "-i", "-w", "-x", "-y", "-6", "-o",
         "-b", "--tun-type", "--tun-port", "--tun-csum", "--tun-remcsum", "--stats", "--rate",
         "--thresholds", "--persistent-conn", "--timeout", "--exact", "--nosort", "--pe",
         "--start-daemon", "--mcast-interface", "--", "-Ln", "-At", "--weight=3",
         "198.18.0.1:80", "198.18.0.1", "198.18.1.1:8080", "[2001:db8::1]:80", "2001:db8::2",
         "rr", "sh", "nosuch", "sh-port,sh-fallback", "flag-1", "gue", "gre", "ipip", "6080",
         "0", "1", "60", "255.255.255.0", "64", "-1", "x", "", "master"]


def run(backend, args, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(args, backend, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                      resolver=NumericResolver())
    return rc, out.getvalue(), err.getvalue()


def seeded_table():
    backend = TableBackend()
    for line in ("-A -t 198.18.0.1:80 -s rr", "-a -t 198.18.0.1:80 -r 198.18.1.1 -m",
                 "-A -f 1 -s sh -b sh-port", "-a -f 1 -r 198.18.1.2 -g"):
        assert run(backend, line.split())[0] == 0
    return backend


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), max_size=8))
def test_any_command_line(args):
    backend = seeded_table()
    before = run(backend, ["-Sn"])[1]
    # stdin for a -R: a good line then one that fails, so a -R must change nothing
    rc, out, err = run(backend, args, stdin="-A -t 198.18.0.8:80\n-A -t 198.18.0.9:80\n")
    assert rc in (0, 1, 2, 255)
    if rc != 0:
        assert err, "a failure always says why"
        assert run(backend, ["-Sn"])[1] == before  # -R included: it is all-or-nothing
