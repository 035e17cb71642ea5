"""--metrics: node_exporter's IPVS families (names, help, labels, values) and lvsuser_* ones."""
import ipaddress
import urllib.request

import pytest

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus-client (pip, requirements-dev.txt) is not installed")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from lvsuser import model  # noqa: E402
from lvsuser.backends.table import TableBackend  # noqa: E402
from lvsuser.control import rules  # noqa: E402
from lvsuser.counters import CORE_HELP, IO_HELP  # noqa: E402
from lvsuser.ops import health, metrics  # noqa: E402

RULES = """\
-A -t 198.18.0.1:80 -s rr
-a -t 198.18.0.1:80 -r 198.18.1.1:8080 -m -w 3
-a -t 198.18.0.1:80 -r 198.18.1.2:8080 -m -w 1
-A -u [2001:db8::1]:53 -s wlc
-a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -g -w 7
-A -f 7 -s rr
-a -f 7 -r 198.18.1.4 -g -w 2
"""

# live state the fake datapath reports: (service addr or mark, dest addr) -> (active, inactive, stats)
LIVE = {
    ("198.18.0.1", "198.18.1.1"): (4, 1, model.Stats(conns=10, inpkts=100, outpkts=90,
                                                     inbytes=6000, outbytes=90000)),
    ("198.18.0.1", "198.18.1.2"): (0, 2, model.Stats(conns=5, inpkts=50, outpkts=45,
                                                     inbytes=3000, outbytes=45000)),
    ("2001:db8::1", "2001:db8::10"): (1, 0, model.Stats(conns=1, inpkts=2, outpkts=0,
                                                       inbytes=120, outbytes=0)),
    (7, "198.18.1.4"): (0, 0, model.Stats()),
}


class LiveTable(TableBackend):
    """The table backend with counts and counters, as the datapath would fill them."""

    def _fill_live_state(self, services):
        for svc in services:
            service_id = svc.fwmark or str(svc.addr)
            total = model.Stats()
            for dest in svc.dests:
                active, inactive, stats = LIVE[(service_id, str(dest.addr))]
                dest.activeconns, dest.inactconns = active, inactive
                dest.stats = model.Stats(**vars(stats))
                for field in ("conns", "inpkts", "outpkts", "inbytes", "outbytes"):
                    setattr(total, field, getattr(total, field) + getattr(stats, field))
            svc.stats = total


def make_backend(cls=LiveTable):
    backend = cls()
    rules.apply_operations(backend, rules.parse_rules(RULES))
    return backend


def scrape(collector):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def labels(**kw):
    return tuple(sorted(kw.items()))


def test_node_exporter_backend_families_with_its_labels_in_its_order():
    text = scrape(metrics.LvsuserCollector(make_backend(), health=health.HealthRegistry()))
    # the lines as node_exporter writes them (client_golang, like prometheus_client, prints the
    # labels sorted by name); only the values' float form differs ("3" there, "3.0" here)
    assert ('node_ipvs_backend_weight{local_address="198.18.0.1",local_mark="",local_port="80",'
            'proto="TCP",remote_address="198.18.1.1",remote_port="8080"} 3.0') in text
    assert ('node_ipvs_backend_connections_active{local_address="2001:db8::1",local_mark="",'
            'local_port="53",proto="UDP",remote_address="2001:db8::10",remote_port="53"} 1.0') in text
    assert ('node_ipvs_backend_weight{local_address="",local_mark="00000007",local_port="0",'
            'proto="FWM",remote_address="198.18.1.4",remote_port="0"} 2.0') in text
    assert ("# HELP node_ipvs_backend_connections_inactive The current inactive connections by "
            "local and remote address.") in text
    assert "# TYPE node_ipvs_backend_weight gauge" in text
    got = samples(text)
    first = labels(local_address="198.18.0.1", local_port="80", remote_address="198.18.1.2",
                   remote_port="8080", proto="TCP", local_mark="")
    assert got[("node_ipvs_backend_connections_active", first)] == 0
    assert got[("node_ipvs_backend_connections_inactive", first)] == 2
    assert got[("node_ipvs_backend_weight", first)] == 1
    assert len([k for k in got if k[0] == "node_ipvs_backend_weight"]) == 4


def test_label_names_are_node_exporters_in_its_order():
    # fullIpvsBackendLabels in node_exporter's collector/ipvs_linux.go
    assert metrics.BACKEND_LABELS == ("local_address", "local_port", "remote_address",
                                      "remote_port", "proto", "local_mark")
    families = {f.name: f for f in metrics.LvsuserCollector(
        make_backend(), health=health.HealthRegistry()).collect()}
    for name in ("node_ipvs_backend_connections_active", "node_ipvs_backend_connections_inactive",
                 "node_ipvs_backend_weight"):
        assert list(families[name].samples[0].labels) == list(metrics.BACKEND_LABELS)


def test_node_exporter_totals_are_the_sums_over_services():
    text = scrape(metrics.LvsuserCollector(make_backend(), health=health.HealthRegistry()))
    got = samples(text)
    assert got[("node_ipvs_connections_total", ())] == 16
    assert got[("node_ipvs_incoming_packets_total", ())] == 152
    assert got[("node_ipvs_outgoing_packets_total", ())] == 135
    assert got[("node_ipvs_incoming_bytes_total", ())] == 9120
    assert got[("node_ipvs_outgoing_bytes_total", ())] == 135000
    assert "# HELP node_ipvs_connections_total The total number of connections made." in text
    assert "# TYPE node_ipvs_incoming_bytes_total counter" in text


def test_per_service_and_per_real_server_counters_as_ipvsadm_stats_shows_them():
    got = samples(scrape(metrics.LvsuserCollector(make_backend(), health=health.HealthRegistry())))
    service = labels(local_address="198.18.0.1", local_port="80", proto="TCP", local_mark="")
    assert got[("lvsuser_service_connections_total", service)] == 15
    assert got[("lvsuser_service_outgoing_bytes_total", service)] == 135000
    dest = labels(local_address="198.18.0.1", local_port="80", remote_address="198.18.1.1",
                  remote_port="8080", proto="TCP", local_mark="")
    assert got[("lvsuser_backend_incoming_packets_total", dest)] == 100
    assert got[("lvsuser_services", ())] == 3 and got[("lvsuser_real_servers", ())] == 4


def test_readings_are_cached_for_cache_seconds():
    collector = metrics.LvsuserCollector(make_backend(), cache_seconds=3600,
                                         health=health.HealthRegistry())
    scrape(collector)
    scrape(collector)
    assert collector.readings == 1
    collector.cache_seconds = 0
    scrape(collector)
    assert collector.readings == 2


def test_rule_changes_are_counted_and_the_previous_hook_still_runs():
    backend = make_backend(TableBackend)
    saved = []
    backend.after_change = lambda b: saved.append(len(b.get_services()))
    counter = metrics.RuleChangeCounter(backend)
    collector = metrics.LvsuserCollector(backend, cache_seconds=0, health=health.HealthRegistry(),
                                         rule_changes=counter)
    rules.apply_operations(backend, rules.parse_rules("-A -t 198.18.0.9:80 -s rr\n"))
    rules.apply_operations(backend, rules.parse_rules(  # one batch: counted once
        "-a -t 198.18.0.9:80 -r 198.18.1.9 -g\n-E -t 198.18.0.9:80 -s wrr\n"))
    with pytest.raises(model.IPVSError):  # refused: not a change
        backend.del_service(model.ServiceKey(af=model.AF_INET, protocol=6,
                                             addr=ipaddress.ip_address("198.18.9.9"), port=1))
    assert samples(scrape(collector))[("lvsuser_rule_changes_total", ())] == 2
    assert saved == [4, 4]
    counter.detach()
    rules.apply_operations(backend, rules.parse_rules("-D -t 198.18.0.9:80\n"))
    assert saved == [4, 4, 3] and counter.count == 2


class CountingTable(LiveTable):
    name = "userspace"

    class core:
        max_conns = 4096

        @staticmethod
        def conn_count():
            return 17

    def get_counters(self):
        return {"core": {"fragment": 2, "pass_not_ip": 3, "tcp_not_syn": 4, "fwd_in": 10},
                "io": {"rx_ring_drops": 1, "rx_frames": 5}}


def test_datapath_counters_by_reason_and_the_table_size():
    got = samples(scrape(metrics.LvsuserCollector(make_backend(CountingTable),
                                                  health=health.HealthRegistry())))
    assert got[("lvsuser_datapath_drops_total", labels(reason="fragment"))] == 2
    assert got[("lvsuser_datapath_drops_total", labels(reason="rx_ring_drops"))] == 1
    assert got[("lvsuser_datapath_passes_total", labels(reason="pass_not_ip"))] == 3
    assert got[("lvsuser_datapath_passes_total", labels(reason="tcp_not_syn"))] == 4
    assert got[("lvsuser_datapath_events_total", labels(counter="fwd_in"))] == 10
    assert got[("lvsuser_datapath_events_total", labels(counter="rx_frames"))] == 5
    assert ("lvsuser_datapath_drops_total", labels(reason="fwd_in")) not in got
    assert got[("lvsuser_connections", ())] == 17
    assert got[("lvsuser_connections_limit", ())] == 4096
    assert got[("lvsuser_info", labels(version=__import__("lvsuser").__version__,
                                       backend="userspace"))] == 1


def test_a_table_backend_has_no_datapath_families():
    got = samples(scrape(metrics.LvsuserCollector(make_backend(), health=health.HealthRegistry())))
    assert not any(name.startswith("lvsuser_datapath") for name, _ in got)
    assert ("lvsuser_connections", ()) not in got


def test_every_counter_is_a_drop_a_pass_or_an_event_as_its_help_says():
    kinds = {name: metrics.classify_counter(text) for name, text in {**CORE_HELP, **IO_HELP}.items()}
    assert {n for n, k in kinds.items() if k == "drop"} >= {
        "eth_truncated", "ip_bad_checksum", "fragment", "table_full", "no_route", "drop_tx_full"}
    assert {n for n, k in kinds.items() if k == "pass"} == {
        "pass_not_ip", "pass_not_service", "tcp_not_syn", "icmp_bad", "icmp_not_conn"}
    assert kinds["conn_new"] == kinds["fwd_out"] == kinds["no_dest"] == "event"


def test_health_state_from_the_registry():
    registry = health.HealthRegistry()
    backend = make_backend()
    svc = backend.get_service(model.ServiceKey(af=model.AF_INET, protocol=6,
                                               addr=ipaddress.ip_address("198.18.0.1"), port=80))
    key = svc.key
    registry.set_real_server_health(key, "198.18.1.1", 8080, up=True, checker="HTTP_GET")
    registry.observe_health_check(key, "198.18.1.1", 8080, ok=False, duration=0.25)
    registry.observe_health_check(key, "198.18.1.1", 8080, ok=False, duration=0.5)
    registry.set_real_server_health(key, "198.18.1.1", 8080, up=False)
    registry.observe_health_check(key, ipaddress.ip_address("198.18.1.2"), 8080, ok=True)
    got = samples(scrape(metrics.LvsuserCollector(backend, health=registry)))
    dest = dict(local_address="198.18.0.1", local_port="80", remote_address="198.18.1.1",
                remote_port="8080", proto="TCP", local_mark="")
    assert got[("lvsuser_real_server_up", labels(**dest, checker="HTTP_GET"))] == 0
    assert got[("lvsuser_real_server_transitions_total", labels(**dest))] == 1
    assert got[("lvsuser_health_checks_total", labels(**dest, result="failure"))] == 2
    assert got[("lvsuser_health_checks_total", labels(**dest, result="success"))] == 0
    assert got[("lvsuser_health_check_duration_seconds", labels(**dest))] == 0.5
    other = dict(dest, remote_address="198.18.1.2")
    assert got[("lvsuser_health_checks_total", labels(**other, result="success"))] == 1
    assert not any(k[0] == "lvsuser_real_server_up" and ("remote_address", "198.18.1.2") in k[1]
                   for k in got)  # checked, but no state reported yet
    registry.forget_real_server(key)
    got = samples(scrape(metrics.LvsuserCollector(backend, health=registry)))
    assert not any(name.startswith("lvsuser_health") for name, _ in got)


def test_health_registry_wants_a_service_key():
    with pytest.raises(TypeError):
        health.HealthRegistry().set_real_server_health("198.18.0.1:80", "198.18.1.1", 80, up=True)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)),
    (":9100", ("0.0.0.0", 9100)), ("198.18.0.1:0", ("198.18.0.1", 0)),
])
def test_listen_addresses(text, expected):
    assert metrics.parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9100", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000",
                                  "example.org:9100"])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError):
        metrics.parse_listen_address(text)


def test_server_serves_the_text_over_http_and_stops():
    backend = make_backend()
    server = metrics.MetricsServer(backend, "127.0.0.1:0", health=health.HealthRegistry()).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        assert reply.status == 200
        assert ('node_ipvs_backend_weight{local_address="198.18.0.1",local_mark="",local_port="80",'
                'proto="TCP",remote_address="198.18.1.1",remote_port="8080"} 3.0') in body
        assert backend.after_change == server.rule_changes._after_change
    finally:
        server.stop()
    assert backend.after_change is None  # the hook it chained is put back
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


# --- `lvsuser run --metrics --procfs`, a real process ----------------------------------------
import os  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def run_director(tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", str(tmp_path / "control.sock"),
                             "--state-dir", str(tmp_path / "state"), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ipvsadm(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               LVSUSER_CONTROL=str(tmp_path / "control.sock"))
    return subprocess.run([sys.executable, "-m", "lvsuser", "ipvsadm", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_run_serves_metrics_and_procfs_and_removes_them_at_stop(tmp_path):
    port = free_port()
    proc = run_director(tmp_path, "--metrics", f"127.0.0.1:{port}", "--procfs",
                        str(tmp_path / "proc"))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert wait_for(lambda: (tmp_path / "control.sock").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        assert ipvsadm(tmp_path, "-A", "-t", "198.18.0.1:80", "-s", "rr").returncode == 0
        assert ipvsadm(tmp_path, "-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1:8080", "-m",
                       "-w", "5").returncode == 0
        ip_vs = tmp_path / "proc" / "net" / "ip_vs"
        assert wait_for(lambda: "  -> C6120101:1F90      Masq    5" in ip_vs.read_text())

        def scraped():
            with urllib.request.urlopen(url, timeout=10) as reply:
                return samples(reply.read().decode())
        dest = labels(local_address="198.18.0.1", local_port="80", remote_address="198.18.1.1",
                      remote_port="8080", proto="TCP", local_mark="")
        assert wait_for(lambda: scraped().get(("node_ipvs_backend_weight", dest)) == 5)
        assert scraped()[("lvsuser_rule_changes_total", ())] == 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not (tmp_path / "proc" / "net").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_run_refuses_a_metrics_port_in_use_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_director(tmp_path, "--metrics", f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"lvsuser: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in err
    assert not (tmp_path / "control.sock").exists()
