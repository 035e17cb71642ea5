"""`lvsuser run --metrics ADDR:PORT`: Prometheus text, node_exporter's IPVS metrics and ours.

Theory of operation
-------------------
Existing LVS dashboards and alerts are written against node_exporter's IPVS collector
(collector/ipvs_linux.go), which reads /proc/net/ip_vs_stats and /proc/net/ip_vs.  We serve the
same families with the same names, help texts, types and labels, computed from the same facts:

* ``node_ipvs_{connections,incoming_packets,outgoing_packets,incoming_bytes,outgoing_bytes}_total``
  -- the namespace's totals (procfs.total_stats: the sums over the services);
* ``node_ipvs_backend_{connections_active,connections_inactive,weight}`` with the labels
  ``local_address, local_port, remote_address, remote_port, proto, local_mark`` in that order
  and with node_exporter's values: addresses as Go prints them (compressed IPv6), ports in
  decimal, proto ``TCP``/``UDP`` (``FWM`` for a firewall-mark service, whose local_address is
  "" and local_port "0", and whose local_mark is the mark as /proc prints it, ``%08X``).
  Like node_exporter, rows with the same labels are summed.

Ours, under ``lvsuser_``: per-service and per-real-server counters (what ``ipvsadm -Ln --stats``
shows), the datapath's counters by reason (drops, packets left to the kernel, the rest), the
connection table's size and limit, rule changes, and health-check state (ops/health.py).

Cost: a scrape reads the services once (``get_services()``: proportional to services and real
servers, never to connections) and the counters; the reading is cached for ``cache_seconds`` so
any number of scrapers cost at most one reading per period.  Connections are never walked: the
table size comes from the core's count.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Iterable, Optional

from lvsuser import model
from lvsuser.ops import health as health_mod
from lvsuser.ops import procfs

log = logging.getLogger("lvsuser.metrics")

BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")
SERVICE_LABELS = ("local_address", "local_port", "proto", "local_mark")

# node_exporter's families: (name, help) exactly as collector/ipvs_linux.go has them.
NODE_TOTALS = (
    ("node_ipvs_connections_total", "The total number of connections made.", "conns"),
    ("node_ipvs_incoming_packets_total", "The total number of incoming packets.", "inpkts"),
    ("node_ipvs_outgoing_packets_total", "The total number of outgoing packets.", "outpkts"),
    ("node_ipvs_incoming_bytes_total", "The total amount of incoming data.", "inbytes"),
    ("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data.", "outbytes"),
)
NODE_BACKEND = (
    ("node_ipvs_backend_connections_active",
     "The current active connections by local and remote address.", "activeconns"),
    ("node_ipvs_backend_connections_inactive",
     "The current inactive connections by local and remote address.", "inactconns"),
    ("node_ipvs_backend_weight", "The current backend weight by local and remote address.",
     "weight"),
)
# ipvsadm -Ln --stats columns, per service and per real server.
STAT_COUNTERS = (
    ("connections", "conns", "connections scheduled"),
    ("incoming_packets", "inpkts", "packets in (client -> real server)"),
    ("outgoing_packets", "outpkts", "packets out (real server -> client)"),
    ("incoming_bytes", "inbytes", "bytes in"),
    ("outgoing_bytes", "outbytes", "bytes out"),
)


def address_label(addr) -> str:
    """An address as Go's net.IP.String() prints it (node_exporter's label values)."""
    return str(addr) if addr is not None else ""


def service_labels(svc: model.Service) -> tuple[str, str, str, str]:
    """local_address, local_port, proto, local_mark for one service, node_exporter's way."""
    if svc.fwmark:
        return "", "0", "FWM", f"{svc.fwmark & 0xFFFFFFFF:08X}"
    return address_label(svc.addr), str(svc.port), procfs.proto_name(svc.protocol), ""


def backend_labels(svc: model.Service, addr, port: int) -> tuple[str, ...]:
    """The six labels of node_ipvs_backend_*, in node_exporter's order."""
    local_address, local_port, proto, local_mark = service_labels(svc)
    return (local_address, local_port, address_label(addr), str(port), proto, local_mark)


def classify_counter(help_text: str) -> str:
    """'drop', 'pass' or 'event' for one datapath counter, from what lvsuser counters says."""
    if help_text.startswith("dropped"):
        return "drop"
    if "left to the kernel" in help_text:
        return "pass"
    return "event"


class Snapshot:
    """One reading of the backend, shared by the scrapes within cache_seconds."""

    def __init__(self, services, counters, conn_count, conn_limit, taken_at):
        self.services = services
        self.counters = counters
        self.conn_count = conn_count
        self.conn_limit = conn_limit
        self.taken_at = taken_at


class RuleChangeCounter:
    """Counts the table changes a backend publishes, by chaining its ``after_change`` hook
    (the daemon saves the table from there; that still runs, first)."""

    def __init__(self, backend) -> None:
        self.count = 0
        self._backend = backend
        self._previous = getattr(backend, "after_change", None)
        if hasattr(backend, "after_change"):
            backend.after_change = self._after_change
            self.attached = True
        else:  # a backend that does not tell (kernel IPVS): no rule-change metric
            self.attached = False

    def _after_change(self, backend) -> None:
        try:
            if self._previous is not None:
                self._previous(backend)
        finally:
            self.count += 1  # under the table's lock: no race with other changes

    def detach(self) -> None:
        if self.attached and self._backend.after_change == self._after_change:
            self._backend.after_change = self._previous
        self.attached = False


class LvsuserCollector:
    """A prometheus_client collector reading one backend (and the health registry)."""

    def __init__(self, backend, cache_seconds: float = 1.0,
                 health: Optional[health_mod.HealthRegistry] = None,
                 rule_changes: Optional[RuleChangeCounter] = None) -> None:
        self.backend = backend
        self.cache_seconds = cache_seconds
        self.health = health if health is not None else health_mod.REGISTRY
        self.rule_changes = rule_changes
        self._lock = threading.Lock()
        self._snapshot: Optional[Snapshot] = None
        self.readings = 0  # backend readings made, for tests of the cache

    # --- reading -------------------------------------------------------------------------
    def _read(self) -> Snapshot:
        services = self.backend.get_services()
        try:
            counters = self.backend.get_counters()
        except (NotImplementedError, AttributeError):
            counters = None
        except Exception as exc:  # a backend reached remotely may refuse: the rest still counts
            log.debug("no datapath counters: %s", exc)
            counters = None
        core = getattr(self.backend, "core", None)
        conn_count = conn_limit = None
        if core is not None:
            conn_count = int(core.conn_count())
            conn_limit = int(getattr(core, "max_conns", 0)) or None
        self.readings += 1
        return Snapshot(services, counters, conn_count, conn_limit, time.monotonic())

    def snapshot(self) -> Snapshot:
        with self._lock:  # one reading at a time; scrapes that wait share it
            current = self._snapshot
            if current is None or time.monotonic() - current.taken_at >= self.cache_seconds:
                current = self._snapshot = self._read()
            return current

    # --- the families ------------------------------------------------------------------
    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot()
        services = snap.services
        total = procfs.total_stats(services)
        for name, text, field in NODE_TOTALS:
            family = CounterMetricFamily(name, text)
            family.add_metric([], getattr(total, field))
            yield family

        sums: dict[tuple, list[int]] = {}
        for svc in services:
            for dest in svc.dests:
                row = sums.setdefault(backend_labels(svc, dest.addr, dest.port), [0, 0, 0])
                row[0] += dest.activeconns
                row[1] += dest.inactconns
                row[2] += dest.weight
        for index, (name, text, _field) in enumerate(NODE_BACKEND):
            family = GaugeMetricFamily(name, text, labels=list(BACKEND_LABELS))
            for labels, values in sums.items():
                family.add_metric(list(labels), values[index])
            yield family

        yield from self._stats_families(services)
        yield from self._table_families(snap)
        yield from self._datapath_families(snap.counters)
        yield from self._health_families(services)

    def _stats_families(self, services) -> Iterable:
        from prometheus_client.core import CounterMetricFamily

        for suffix, field, text in STAT_COUNTERS:
            per_service = CounterMetricFamily(
                f"lvsuser_service_{suffix}_total", f"Per virtual service: {text} (ipvsadm -Ln --stats).",
                labels=list(SERVICE_LABELS))
            per_backend = CounterMetricFamily(
                f"lvsuser_backend_{suffix}_total", f"Per real server: {text} (ipvsadm -Ln --stats).",
                labels=list(BACKEND_LABELS))
            for svc in services:
                per_service.add_metric(list(service_labels(svc)), getattr(svc.stats, field))
                for dest in svc.dests:
                    per_backend.add_metric(list(backend_labels(svc, dest.addr, dest.port)),
                                           getattr(dest.stats, field))
            yield per_service
            yield per_backend

    def _table_families(self, snap: Snapshot) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        import lvsuser

        info = GaugeMetricFamily("lvsuser_info", "The director's version and backend (always 1).",
                                 labels=["version", "backend"])
        info.add_metric([lvsuser.__version__, str(getattr(self.backend, "name", ""))], 1)
        yield info
        count = GaugeMetricFamily("lvsuser_services", "Virtual services in the table.")
        count.add_metric([], len(snap.services))
        yield count
        dests = GaugeMetricFamily("lvsuser_real_servers", "Real servers in the table (all services).")
        dests.add_metric([], sum(len(svc.dests) for svc in snap.services))
        yield dests
        if snap.conn_count is not None:
            conns = GaugeMetricFamily("lvsuser_connections",
                                      "Entries in the connection table (connections and templates).")
            conns.add_metric([], snap.conn_count)
            yield conns
        if snap.conn_limit is not None:
            limit = GaugeMetricFamily("lvsuser_connections_limit",
                                      "Size of the connection table (lvsuser run --max-conns).")
            limit.add_metric([], snap.conn_limit)
            yield limit
        if self.rule_changes is not None and self.rule_changes.attached:
            changes = CounterMetricFamily("lvsuser_rule_changes",
                                          "Changes applied to the table (a batch counts once).")
            changes.add_metric([], self.rule_changes.count)
            yield changes

    def _datapath_families(self, counters: Optional[dict]) -> Iterable:
        from prometheus_client.core import CounterMetricFamily

        from lvsuser.counters import CORE_HELP, IO_HELP

        if counters is None:
            return
        drops = CounterMetricFamily("lvsuser_datapath_drops",
                                    "Packets the datapath dropped, by reason (lvsuser counters).",
                                    labels=["reason"])
        passes = CounterMetricFamily("lvsuser_datapath_passes",
                                     "Packets left to the director's kernel, by reason.",
                                     labels=["reason"])
        events = CounterMetricFamily("lvsuser_datapath_events",
                                     "The datapath's other counters: forwarded packets, "
                                     "connections, frames, batches (lvsuser counters).",
                                     labels=["counter"])
        for section, helps in (("core", CORE_HELP), ("io", IO_HELP)):
            for name, value in (counters.get(section) or {}).items():
                kind = classify_counter(helps.get(name, ""))
                target = drops if kind == "drop" else passes if kind == "pass" else events
                target.add_metric([name], value)
        yield drops
        yield passes
        yield events

    def _health_families(self, services) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        states = self.health.snapshot()
        if not states:
            return
        by_key = {svc.key: svc for svc in services}
        up = GaugeMetricFamily("lvsuser_real_server_up",
                               "1 when the real server's health checks pass, 0 when they fail.",
                               labels=list(BACKEND_LABELS) + ["checker"])
        transitions = CounterMetricFamily("lvsuser_real_server_transitions",
                                          "Up/down changes of the real server's health.",
                                          labels=list(BACKEND_LABELS))
        checks = CounterMetricFamily("lvsuser_health_checks", "Health checks run, by result.",
                                     labels=list(BACKEND_LABELS) + ["result"])
        duration = GaugeMetricFamily("lvsuser_health_check_duration_seconds",
                                     "How long the last health check took.",
                                     labels=list(BACKEND_LABELS))
        for (key, addr, port), state in sorted(states.items(), key=lambda item: str(item[0])):
            svc = by_key.get(key) or _service_from_key(key)
            labels = list(backend_labels(svc, addr, port))
            if state.up is not None:
                up.add_metric(labels + [state.checker], 1 if state.up else 0)
            transitions.add_metric(labels, state.transitions)
            checks.add_metric(labels + ["success"], state.checks_ok)
            checks.add_metric(labels + ["failure"], state.checks_failed)
            if state.last_duration is not None:
                duration.add_metric(labels, state.last_duration)
        yield up
        yield transitions
        yield checks
        yield duration


def _service_from_key(key: model.ServiceKey) -> model.Service:
    """A service shell for labels, when health is known for a service no longer in the table."""
    return model.Service(af=key.af, protocol=key.protocol, addr=key.addr, port=key.port,
                         fwmark=key.fwmark)


def parse_listen_address(text: str) -> tuple[str, int]:
    """ADDR:PORT, [IPv6]:PORT or :PORT (all addresses) -> (host, port); ValueError says why."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not ADDR:PORT")
    port = int(port_text)
    if port > 65535:  # 0: any free port (tests)
        raise ValueError(f"port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address") from None
    return host, port


class MetricsServer:
    """The HTTP endpoint: prometheus_client's server on ADDR:PORT, any path, own registry."""

    def __init__(self, backend, address: str, cache_seconds: float = 1.0,
                 health: Optional[health_mod.HealthRegistry] = None) -> None:
        self.host, self.port = parse_listen_address(address)
        self.backend = backend
        self.rule_changes = RuleChangeCounter(backend)
        self.collector = LvsuserCollector(backend, cache_seconds, health, self.rule_changes)
        self._httpd = None
        self._thread = None

    def start(self) -> "MetricsServer":
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._httpd, self._thread = start_http_server(self.port, self.host, registry=registry)
        except OSError:
            self.rule_changes.detach()
            raise
        self.port = self._httpd.server_address[1]
        log.info("metrics on http://%s/metrics", _url_host(self.host, self.port))
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.rule_changes.detach()


def _url_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
