"""keepalived.conf: syntax (comments, quotes, braces, include), meaning (virtual_server by
address, fwmark and group; real_server and checker keywords; keepalived's defaults), messages
naming file and line, and `lvsuser keepalived check`."""
from __future__ import annotations

import glob
import ipaddress
import os
import re
import subprocess
import sys

import pytest

from lvsuser import model
from lvsuser.keepalived.config import VRRP_NOTE, load
from lvsuser.keepalived.parser import split_words

SAMPLES = "/usr/share/doc/keepalived/samples"


def write(tmp_path, text, name="keepalived.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_words_quotes_comments_and_braces():
    assert split_words('  notify_up "/bin/x a b" # comment') == ["notify_up", "/bin/x a b"]
    assert split_words("real_server 1.2.3.4 80{weight 2}") == [
        "real_server", "1.2.3.4", "80", "{", "weight", "2", "}"]
    assert split_words("! a whole comment") == []
    assert split_words("path /a!b#c") == ["path", "/a!b#c"]  # inside a word: not a comment


def test_a_full_virtual_server(tmp_path):
    path = write(tmp_path, """
virtual_server 198.18.0.1 80 {
    delay_loop 3
    lvs_sched wrr
    lvs_method DR
    persistence_timeout
    persistence_granularity 255.255.255.0
    protocol TCP
    quorum 2
    hysteresis 1
    quorum_up "/bin/echo up"
    sorry_server 198.18.1.99 8080
    alpha
    real_server 198.18.1.1 80 {
        weight 3
        inhibit_on_failure
        notify_down "/usr/local/bin/down.sh 198.18.1.1 DOWN"
        HTTP_GET {
            url {
                path /health
                digest 9B3A0C85A887A256D6939DA88AABD8CD
                status_code 200 301-302
            }
            virtualhost www.example.test
            connect_timeout 2
            retry 4
        }
    }
    real_server 198.18.1.2 80 {
        lvs_method NAT
        MISC_CHECK {
            misc_path "/usr/bin/check arg1"
            misc_timeout 5
            misc_dynamic
        }
        TCP_CHECK { connect_port 8080 }
    }
}
""")
    conf = load(path)
    assert conf.errors == []
    (vs,) = conf.virtual_servers
    (svc,) = vs.services
    assert (svc.addr, svc.port, svc.protocol, svc.scheduler) == (
        ipaddress.ip_address("198.18.0.1"), 80, model.IPPROTO_TCP, "wrr")
    assert svc.flags & model.SVC_F_PERSISTENT and svc.timeout == 360  # keepalived's default
    assert svc.netmask == 0xFFFFFF00
    assert (vs.delay_loop, vs.quorum, vs.hysteresis, vs.alpha) == (3, 2, 1, True)
    assert vs.quorum_up == ["/bin/echo", "up"]
    assert (str(vs.sorry_server.addr), vs.sorry_server.port) == ("198.18.1.99", 8080)
    rs1, rs2 = vs.real_servers
    assert (rs1.weight, rs1.fwd, rs1.inhibit_on_failure) == (3, model.Forward.ROUTE, True)
    assert rs1.notify_down == ["/usr/local/bin/down.sh", "198.18.1.1", "DOWN"]
    (http,) = rs1.checkers
    assert http.kind == "HTTP_GET" and (http.connect_timeout, http.retry) == (2, 4)
    assert http.options["urls"] == [{"path": "/health",
                                     "digest": "9b3a0c85a887a256d6939da88aabd8cd",
                                     "status_code": {200, 301, 302}}]
    assert http.options["virtualhost"] == "www.example.test"
    assert (rs2.weight, rs2.fwd) == (1, model.Forward.MASQ)
    misc, tcp = rs2.checkers
    assert misc.options == {"misc_path": "/usr/bin/check arg1", "misc_timeout": 5,
                            "misc_dynamic": True}
    assert tcp.kind == "TCP_CHECK" and tcp.connect_port == 8080


def test_virtual_server_virtualhost_is_the_http_checkers_default(tmp_path):
    conf = load(write(tmp_path, """virtual_server 198.18.0.1 80 {
    virtualhost www.vs.test
    real_server 198.18.1.1 80 { HTTP_GET { url { path / } } }
    real_server 198.18.1.2 80 { HTTP_GET { url { path / }
        virtualhost own.test } }
}
"""))
    assert conf.errors == []
    hosts = [rs.checkers[0].options["virtualhost"] for rs in conf.virtual_servers[0].real_servers]
    assert hosts == ["www.vs.test", "own.test"]


def test_tunnel_methods(tmp_path):
    conf = load(write(tmp_path, """virtual_server 198.18.0.1 80 {
    lvs_method TUN type gue port 6080 csum
    real_server 198.18.1.1 80 { }
    real_server 198.18.1.2 80 { lvs_method TUN type gre }
    real_server 198.18.1.3 80 { lvs_method DR }
}
"""))
    assert conf.errors == []
    dests = {str(d.addr): (d.fwd, d.tun_type, d.tun_port, d.tun_flags)
             for d in conf.services()[0].dests}
    assert dests == {"198.18.1.1": (model.Forward.TUNNEL, model.TunType.GUE, 6080,
                                    model.TUN_FLAG_CSUM),
                     "198.18.1.2": (model.Forward.TUNNEL, model.TunType.GRE, 0, 0),
                     "198.18.1.3": (model.Forward.ROUTE, model.TunType.IPIP, 0, 0)}
    bad = load(write(tmp_path, "virtual_server 198.18.0.1 80 {\n lvs_method TUN type gue\n}\n",
                     "b.conf"))
    assert "type gue needs a port" in str(bad.errors[0])
    bad = load(write(tmp_path, "virtual_server 198.18.0.1 80 {\n lvs_method DR fast\n}\n",
                     "c.conf"))
    assert "takes no options" in str(bad.errors[0])


def test_groups_fwmark_and_includes(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path, """virtual_server_group WEB {
    198.18.0.10-12 80
    fwmark 9
}
""", "conf.d/groups.conf")
    path = write(tmp_path, """include conf.d/*.conf
virtual_server group WEB {
    lb_algo rr
    real_server 198.18.1.1 80 { TCP_CHECK {} }
}
virtual_server fwmark 5 {
    protocol UDP
    real_server 198.18.1.2 53 { weight 2 }
}
""")
    conf = load(path)
    assert conf.errors == []
    group, mark = conf.virtual_servers
    keys = [(str(s.addr), s.port) if not s.fwmark else ("fwmark", s.fwmark)
            for s in group.services]
    assert keys == [("198.18.0.10", 80), ("198.18.0.11", 80), ("198.18.0.12", 80),
                    ("fwmark", 9)]
    assert mark.services[0].fwmark == 5 and mark.services[0].protocol == 0
    # the table it makes: every group member gets the real server
    services = conf.services()
    assert len(services) == 5
    assert all(len(s.dests) == 1 for s in services)


def test_notify_script_user_is_named_not_taken_for_an_argument(tmp_path):
    conf = load(write(tmp_path, """virtual_server 198.18.0.1 80 {
    real_server 198.18.1.1 80 {
        notify_up /usr/local/bin/up.sh nobody
        notify_down "/usr/local/bin/down.sh a b"
    }
}
"""))
    assert conf.errors == []
    rs = conf.virtual_servers[0].real_servers[0]
    assert rs.notify_up == ["/usr/local/bin/up.sh"]
    assert rs.notify_down == ["/usr/local/bin/down.sh", "a", "b"]
    (warning,) = [m for m in conf.messages if m.level == "warning"]
    assert warning.where.endswith(":3") and "as user nobody is not supported" in warning.text


def test_unknown_keyword_is_an_error_with_file_and_line(tmp_path):
    path = write(tmp_path, """virtual_server 198.18.0.1 80 {
    real_server 198.18.1.1 80 {
        wieght 3
    }
}
""")
    conf = load(path)
    assert [str(m) for m in conf.errors] == [
        f"{path}:3: error: unknown keyword 'wieght' in real_server"]


def test_unsupported_keepalived_keywords_are_named_not_fatal(tmp_path):
    path = write(tmp_path, """global_defs {
    router_id LVS_1
    smtp_server 198.18.9.9
}
vrrp_instance VI_1 {
    state MASTER
}
virtual_server 198.18.0.1 80 {
    smtp_alert
    real_server 198.18.1.1 80 {
        HTTP_GET {
            url { path /
                  regex "ok" }
            bind_if eth0
        }
    }
}
""")
    conf = load(path)
    assert conf.errors == []
    text = [str(m) for m in conf.messages]
    assert f"{path}:2: note: global_defs router_id: {VRRP_NOTE}" in text
    assert f"{path}:5: note: vrrp_instance: {VRRP_NOTE}" in text
    warned = {(m.where, re.search(r"'(\w+)'", m.text).group(1))
              for m in conf.messages if m.level == "warning"}
    assert warned == {(f"{path}:3", "smtp_server"), (f"{path}:9", "smtp_alert"),
                      (f"{path}:13", "regex"), (f"{path}:14", "bind_if")}


@pytest.mark.parametrize("text,message", [
    ("virtual_server 198.18.0.1 80 {\n", "block not closed"),
    ("}\n", "'}' without an open block"),
    ("virtual_server group NOPE {\n}\n", "virtual_server_group 'NOPE' is not defined"),
    ("virtual_server 198.18.0.1 80 {\n real_server 198.18.1.1 80 {\n HTTP_GET {\n }\n }\n}\n",
     "HTTP_GET has no url"),
    ("virtual_server 198.18.0.1 80 {\n lvs_method FOO\n}\n", "lvs_method FOO"),
    ("include missing/*.conf\n", "no such file"),
    ("virtual_server 198.18.0.1 80 {\n lb_algo nosuch\n}\n", "lb_algo nosuch: no such scheduler"),
])
def test_errors(tmp_path, text, message):
    conf = load(write(tmp_path, text))
    assert conf.errors and message in str(conf.errors[0])


def test_check_command_prints_the_rules(tmp_path):
    path = write(tmp_path, """virtual_server 198.18.0.1 80 {
    lb_algo rr
    lb_kind NAT
    persistence_timeout 50
    real_server 198.18.1.3 80 { weight 2
        TCP_CHECK { connect_timeout 3 } }
    real_server 198.18.1.2 80 { weight 1
        TCP_CHECK { alpha } }
}
""")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    done = subprocess.run([sys.executable, "-m", "lvsuser", "keepalived", "check", path],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    # keepalived programs only the servers that start alive: the alpha one waits
    assert done.stdout == ("-A -t 198.18.0.1:80 -s rr -p 50\n"
                           "-a -t 198.18.0.1:80 -r 198.18.1.3:80 -m -w 2\n")
    bad = write(tmp_path, "virtual_server 198.18.0.1 80 {\n lb_algo rr\n bogus 1\n}\n", "b.conf")
    done = subprocess.run([sys.executable, "-m", "lvsuser", "keepalived", "check", bad],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and f"{bad}:3: error: unknown keyword 'bogus'" in done.stderr
    # a service the table refuses (an IPv6 persistence netmask over 128) is an error too
    refused = write(tmp_path, "virtual_server 2001:db8::1 80 {\n persistence_timeout 60\n"
                              " persistence_granularity 200\n}\n", "r.conf")
    done = subprocess.run([sys.executable, "-m", "lvsuser", "keepalived", "check", refused],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{refused}:1: virtual_server 2001:db8::1 80 cannot be set up" in done.stderr


# --- Debian's samples ------------------------------------------------------------------------

def map_addresses(text: str) -> str:
    """Every address of a sample moved into the test ranges -- IPv4 into 198.18.0.0/15 (last
    two octets kept), IPv6 into 2001:db8::/32 (last 64 bits kept) -- so the rules stay
    distinct; done here, not in the files."""
    def move4(match):
        octets = match.group(0).split(".")
        if int(octets[0]) == 255:  # a netmask stays a netmask
            return match.group(0)
        return f"198.{18 + int(octets[1]) % 2}.{octets[2]}.{octets[3]}"

    def move6(match):
        try:
            address = ipaddress.IPv6Address(match.group(0))
        except ValueError:
            return match.group(0)
        low = int(address) & (2**64 - 1)
        return str(ipaddress.IPv6Address((0x20010db8 << 96) | low))

    text = re.sub(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", move4, text)
    return re.sub(r"(?<![\w:])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![\w:])", move6, text)


def sample_files():
    return sorted(glob.glob(os.path.join(SAMPLES, "keepalived.conf.*")))


def test_address_mapping():
    assert map_addresses("real_server 192.168.201.100 443 255.255.255.0") == \
        "real_server 198.18.201.100 443 255.255.255.0"
    assert map_addresses("ae00::2-9 80\nvirtual_server ae00::1 80 {") == \
        "2001:db8::2-9 80\nvirtual_server 2001:db8::1 80 {"


def test_debian_samples_are_installed():
    assert sample_files(), f"no keepalived samples in {SAMPLES}: run tools/setup.sh"


@pytest.mark.parametrize("sample", sample_files() or ["(none)"], ids=os.path.basename)
def test_debian_sample_loads(tmp_path, sample):
    if sample == "(none)":
        pytest.fail(f"no keepalived samples in {SAMPLES}: run tools/setup.sh")
    opener = open
    if sample.endswith(".gz"):
        import gzip
        opener = gzip.open
    with opener(sample, "rt", errors="replace") as handle:
        text = map_addresses(handle.read())
    path = write(tmp_path, text, os.path.basename(sample).removesuffix(".gz"))
    conf = load(path)
    # every message names its place; errors only for keywords no keepalived knows
    for message in conf.messages:
        assert re.match(rf"{re.escape(path)}:\d+$", message.where), message
    assert conf.errors == [], "\n".join(map(str, conf.errors))
    for svc in conf.services():
        addresses = [svc.addr] if svc.addr else []
        addresses += [d.addr for d in svc.dests]
        assert all(a in ipaddress.ip_network("198.18.0.0/15") or
                   a in ipaddress.ip_network("2001:db8::/32") for a in addresses), addresses


def test_conditional_lines_and_variables(tmp_path, monkeypatch):
    monkeypatch.setattr("lvsuser.keepalived.parser.config_id", lambda: "high")
    path = write(tmp_path, """$VIP=198.18.0.7
$PORT=8080
virtual_server $VIP ${PORT} {
@high    lb_algo wrr
@low     lb_algo rr
@^low    real_server 198.18.1.1 $PORT { weight 4 }
@^high   real_server 198.18.1.2 $PORT { weight 5 }
}
""")
    conf = load(path)
    assert conf.errors == []
    (vs,) = conf.virtual_servers
    assert (str(vs.services[0].addr), vs.services[0].port) == ("198.18.0.7", 8080)
    assert vs.services[0].scheduler == "wrr"
    assert [(str(r.addr), r.port, r.weight) for r in vs.real_servers] == [
        ("198.18.1.1", 8080, 4)]
    bad = load(write(tmp_path, "virtual_server $NOPE 80 {\n}\n", "u.conf"))
    assert "$NOPE is not defined" in str(bad.errors[0])


# What keepalived programs at start from these samples (addresses mapped): servers without
# alpha are in with their weight, alpha ones wait for a success (quorum: alpha, so no server),
# fwmark real servers without a port get port 0.
SAMPLE_RULES = {
    "keepalived.conf.sample": "-A -t 198.18.10.2:1358 -s rr -p 50\n"
                              "-a -t 198.18.10.2:1358 -r 198.18.200.2:1358 -m -w 1\n",
    "keepalived.conf.fwmark": "-A -f 1 -s rr -p 900\n"
                              "-a -f 1 -r 198.18.201.100:0 -m -w 1\n"
                              "-a -f 1 -r 198.18.201.101:0 -m -w 1\n",
    "keepalived.conf.quorum": "-A -t 198.18.1.1:80 -s wrr -p 900\n",
    "keepalived.conf.IPv6": "-A -t [2001:db8::1]:80 -s rr -p 50\n"
                            "-a -t [2001:db8::1]:80 -r [2001:db8::10]:25 -m -w 1\n",
}


@pytest.mark.parametrize("name", sorted(SAMPLE_RULES))
def test_debian_sample_rules(tmp_path, name):
    from lvsuser.keepalived.cli import format_rules

    with open(os.path.join(SAMPLES, name)) as handle:
        path = write(tmp_path, map_addresses(handle.read()), name)
    assert format_rules(load(path).services()) == SAMPLE_RULES[name]


def test_debian_virtual_server_group_sample(tmp_path):
    with open(os.path.join(SAMPLES, "keepalived.conf.virtual_server_group")) as handle:
        path = write(tmp_path, map_addresses(handle.read()))
    services = load(path).services()
    # 10.0.0.1 8080, 10.0.0.2 80, 192.168.200.1 1358, 192.168.200.3-10 80, fwmark 1 and 2
    assert len(services) == 3 + 8 + 2
    assert sorted(s.fwmark for s in services if s.fwmark) == [1, 2]
    assert all(sorted(str(d.addr) for d in s.dests) == ["198.18.200.1", "198.18.200.2"]
               for s in services)
