"""Metrics with the real programs: node_exporter reading --procfs, Prometheus scraping --metrics.

Each test runs its director and the real program inside a namespace it creates, on a
198.18.0.0/15 address, and stops them (the Topology removes everything, also on failure):

* Debian's prometheus-node-exporter, run as
  ``--path.procfs DIR --collector.disable-defaults --collector.ipvs``, reports the backends
  (addresses, ports, weights, active/inactive) that ``lvsuser ipvsadm -Ln`` lists, and the
  same node_ipvs_* samples as our own --metrics endpoint;
* a real Prometheus server scraping --metrics returns them over its HTTP query API;
* with traffic through a userspace director, ``-Ln --stats`` agrees with the exported counters.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse

import pytest

from .conftest import start_realserver, wait_for
from .test_forward import VIP_NAT, Director, build_nat, curl_names

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus-client (pip, requirements-dev.txt) is not installed")

NODE_EXPORTER = shutil.which("prometheus-node-exporter")
PROMETHEUS = shutil.which("prometheus")
needs_node_exporter = pytest.mark.skipif(
    NODE_EXPORTER is None, reason="prometheus-node-exporter not installed (apt package "
                                  "prometheus-node-exporter; tools/setup.sh installs it)")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt package prometheus; "
                               "tools/setup.sh installs it)")

HOST = "198.18.210.1"
RULES = [
    ("-A", "-t", "198.18.0.1:80", "-s", "rr"),
    ("-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1:8080", "-m", "-w", "3"),
    ("-a", "-t", "198.18.0.1:80", "-r", "198.18.1.2:8080", "-m", "-w", "1"),
    ("-A", "-u", "198.18.0.2:53", "-s", "wlc", "-p", "60"),
    ("-a", "-u", "198.18.0.2:53", "-r", "198.18.1.3", "-g", "-w", "7"),
    ("-A", "-t", "[2001:db8::1]:443", "-s", "sh"),
    ("-a", "-t", "[2001:db8::1]:443", "-r", "[2001:db8::10]:8443", "-m", "-w", "2"),
    ("-A", "-f", "7", "-s", "rr"),
    ("-a", "-f", "7", "-r", "198.18.1.4", "-g", "-w", "0"),
]


def listing_backends(text):
    """`ipvsadm -Ln` -> {(proto, local address, local port, mark, remote address, remote port):
    (weight, active, inactive)}, in node_exporter's terms."""
    backends, service = {}, None
    for line in text.splitlines()[3:]:
        words = line.split()
        if words[0] in ("TCP", "UDP", "SCTP"):
            host, _, port = words[1].rpartition(":")
            service = (words[0], host.strip("[]"), int(port), 0)
        elif words[0] == "FWM":
            service = ("FWM", "", 0, int(words[1]))
        elif words[0] == "->":
            host, _, port = words[1].rpartition(":")
            backends[service + (host.strip("[]"), int(port))] = (int(words[3]), int(words[4]),
                                                                 int(words[5]))
    return backends


def exported_backends(samples):
    """node_ipvs_backend_* samples -> the same shape as listing_backends."""
    out = {}
    names = ("node_ipvs_backend_weight", "node_ipvs_backend_connections_active",
             "node_ipvs_backend_connections_inactive")
    for index, name in enumerate(names):
        for labels, value in samples.get(name, {}).items():
            d = dict(labels)  # Prometheus stores no label whose value is empty
            key = (d["proto"], d.get("local_address", ""), int(d["local_port"]),
                   int(d["local_mark"], 16) if d.get("local_mark") else 0,
                   d["remote_address"], int(d["remote_port"]))
            out.setdefault(key, [0, 0, 0])[index] = int(value)
    return {key: tuple(values) for key, values in out.items()}


def parse(text):
    """Exposition text -> {sample name: {sorted labels: value}}."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def http_get(topo, ns, url):
    result = topo.run(ns, ["curl", "-s", "-f", "-m", "5", url], timeout=10)
    return result.stdout if result.returncode == 0 else None


def host_namespace(topo):
    ns = topo.add_ns("mx")
    topo.link_up(ns, "lo")
    topo.addr(ns, "lo", f"{HOST}/32")
    return ns


def configured_director(topo, ns, tmp_path, *extra):
    director = Director(topo, ns, str(tmp_path / "control.sock"),
                        extra_args=("--backend", "table", *extra))
    director.start()
    for rule in RULES:
        director.ipvsadm(*rule)
    return director


@needs_node_exporter
def test_node_exporter_reads_our_procfs_as_ipvsadm_lists_it(topo, tmp_path, lvsuser_ready):
    ns = host_namespace(topo)
    procdir = tmp_path / "proc"
    director = configured_director(topo, ns, tmp_path, "--procfs", str(procdir),
                                   "--metrics", f"{HOST}:9177")
    try:
        expected = listing_backends(director.ipvsadm("-Ln").stdout)
        assert len(expected) == 5
        assert wait_for(lambda: "C6120104:0000" in (procdir / "net" / "ip_vs").read_text(), 5)
        exporter = topo.popen(ns, [NODE_EXPORTER, "--path.procfs", str(procdir),
                                   "--collector.disable-defaults", "--collector.ipvs",
                                   "--web.listen-address", f"{HOST}:9100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://{HOST}:9100/metrics"
        text = wait_for(lambda: http_get(topo, ns, url), 15)
        assert text, f"node_exporter did not answer: {exporter.poll()}"
        scraped = parse(text)
        assert scraped["node_scrape_collector_success"][(("collector", "ipvs"),)] == 1
        assert exported_backends(scraped) == expected
        assert scraped["node_ipvs_connections_total"][()] == 0
        # our endpoint exports exactly node_exporter's node_ipvs_* samples
        ours = parse(http_get(topo, ns, f"http://{HOST}:9177/metrics"))
        for name in scraped:
            if name.startswith("node_ipvs_"):
                assert ours[name] == scraped[name], name
        # a change shows up in the file, and so in node_exporter, within a second or two
        director.ipvsadm("-e", "-t", "198.18.0.1:80", "-r", "198.18.1.2:8080", "-m", "-w", "9")
        key = ("TCP", "198.18.0.1", 80, 0, "198.18.1.2", 8080)
        assert wait_for(lambda: exported_backends(parse(http_get(topo, ns, url) or ""))
                        .get(key) == (9, 0, 0), 5)
    finally:
        assert director.stop() == 0, director.log()
    assert not (procdir / "net").exists()


@needs_prometheus
def test_prometheus_scrapes_metrics_and_answers_queries(topo, tmp_path, lvsuser_ready):
    ns = host_namespace(topo)
    director = configured_director(topo, ns, tmp_path, "--metrics", f"{HOST}:9177")
    try:
        expected = listing_backends(director.ipvsadm("-Ln").stdout)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: lvsuser\n    static_configs:\n"
            f"      - targets: ['{HOST}:9177']\n")
        topo.popen(ns, [PROMETHEUS, f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address={HOST}:9090"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path))

        def query(expr):
            body = http_get(topo, ns, f"http://{HOST}:9090/api/v1/query?"
                                      + urllib.parse.urlencode({"query": expr}))
            if not body:
                return None
            reply = json.loads(body)
            return reply["data"]["result"] if reply.get("status") == "success" else None

        def backends_from_prometheus():
            got = {}
            for index, name in enumerate(("node_ipvs_backend_weight",
                                          "node_ipvs_backend_connections_active",
                                          "node_ipvs_backend_connections_inactive")):
                for row in query(name) or []:
                    labels = {k: v for k, v in row["metric"].items()
                              if k not in ("__name__", "job", "instance")}
                    got.setdefault(tuple(sorted(labels.items())), {})[name] = row["value"][1]
            samples = {}
            for labels, values in got.items():
                for name, value in values.items():
                    samples.setdefault(name, {})[labels] = float(value)
            return exported_backends(samples)

        assert wait_for(lambda: backends_from_prometheus() == expected, 40, 0.5), \
            backends_from_prometheus()
        up = query('up{job="lvsuser"}')
        assert up and up[0]["value"][1] == "1"
        services = query("lvsuser_services")
        assert services and services[0]["value"][1] == "4"
    finally:
        assert director.stop() == 0, director.log()


def stats_listing(text):
    """`ipvsadm -Ln --stats` -> {(service, dest or None): (conns, inpkts, outpkts, inbytes,
    outbytes)}; the test keeps the numbers small enough to be printed whole."""
    rows, service = {}, None
    for line in text.splitlines()[3:]:
        words = line.split()
        numbers = tuple(int(word) for word in words[-5:])  # a K/M suffix would fail here
        if words[0] == "->":
            rows[(service, words[1])] = numbers
        else:
            service = words[1]
            rows[(service, None)] = numbers
    return rows


def conn_rows_from_proc(text):
    """/proc/net/ip_vs_conn -> (proto, client, virtual, dest, state) per IPv4 connection."""
    def v4(hex_addr, hex_port):
        value = int(hex_addr, 16)
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}:" \
               f"{int(hex_port, 16)}"
    rows = []
    for line in text.splitlines()[1:]:
        w = line.split()
        rows.append((w[0], v4(w[1], w[2]), v4(w[3], w[4]), v4(w[5], w[6]), w[7]))
    return rows


def conn_rows_from_lnc(text):
    """`ipvsadm -Lnc` -> the same tuples."""
    return [(w[0], w[3], w[4], w[5], w[2]) for w in (line.split() for line in text.splitlines()[2:])]


def test_stats_listing_agrees_with_the_exported_counters(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", f"198.18.1.{11 + n}")
    director = Director(topo, dr, str(tmp_path / "control.sock"),
                        extra_args=("--metrics", "198.18.0.1:9177",
                                    "--procfs", str(tmp_path / "proc")))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.12:80", "-m")
        names = curl_names(topo, cl, f"http://{VIP_NAT}/", 6)
        assert sorted(names) == ["rs1"] * 3 + ["rs2"] * 3, names
        time.sleep(1.5)  # past the metrics' one-second cache, traffic over
        listing = stats_listing(director.ipvsadm("-Ln", "--stats").stdout)
        scraped = parse(http_get(topo, dr, "http://198.18.0.1:9177/metrics"))
        fields = ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes",
                  "outgoing_bytes")
        service = (("local_address", VIP_NAT), ("local_mark", ""), ("local_port", "80"),
                   ("proto", "TCP"))
        assert tuple(int(scraped[f"lvsuser_service_{f}_total"][service]) for f in fields) == \
            listing[(f"{VIP_NAT}:80", None)]
        assert listing[(f"{VIP_NAT}:80", None)][0] == 6
        for rip in ("198.18.1.11", "198.18.1.12"):
            labels = tuple(sorted(dict(service, remote_address=rip, remote_port="80").items()))
            assert tuple(int(scraped[f"lvsuser_backend_{f}_total"][labels]) for f in fields) == \
                listing[(f"{VIP_NAT}:80", f"{rip}:80")]
        node_names = ("node_ipvs_connections_total", "node_ipvs_incoming_packets_total",
                      "node_ipvs_outgoing_packets_total", "node_ipvs_incoming_bytes_total",
                      "node_ipvs_outgoing_bytes_total")
        assert tuple(int(scraped[name][()]) for name in node_names) == \
            listing[(f"{VIP_NAT}:80", None)]
        # the six connections closed: each real server holds three inactive ones (TIME_WAIT)
        backends = exported_backends(scraped)
        assert backends == listing_backends(director.ipvsadm("-Ln").stdout)
        assert sorted(inactive for _, _, inactive in backends.values()) == [3, 3]
        # /proc/net/ip_vs_conn lists what -Lnc lists (the kernel's hex, -Lnc's dotted quads)
        conn_file = tmp_path / "proc" / "net" / "ip_vs_conn"
        listed = sorted(conn_rows_from_lnc(director.ipvsadm("-Lnc").stdout))
        assert len(listed) == 6
        assert wait_for(lambda: sorted(conn_rows_from_proc(conn_file.read_text())) == listed, 5)
        counted = director.counters()["core"]
        assert scraped["lvsuser_datapath_events_total"][(("counter", "conn_new"),)] == \
            counted["conn_new"] == 6
        assert scraped["lvsuser_connections_limit"][()] > 0
        assert scraped["lvsuser_rule_changes_total"][()] == 3
    finally:
        assert director.stop() == 0, director.log()
    assert os.path.exists(str(tmp_path)) and not os.path.exists(str(tmp_path / "control.sock"))
