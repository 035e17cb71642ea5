"""One benchmark run: every candidate, round after round, alternating so drift cancels.

Theory of operation
-------------------
The machine is shared and its speed drifts (other jobs, frequency, thermal). Measuring all rounds
of A and then all rounds of B would fold that drift into the A/B ratio. Instead each round visits
every candidate once (A B C A B C ...), each candidate measures each metric once per round, and
the report takes the median per metric over rounds: drift that is slow compared with one round
hits every candidate alike.

A candidate that fails to start is marked unavailable with its reason and skipped in later
rounds; a metric that fails inside a running candidate is recorded as an error for that round and
the others still run. Nothing here decides whether a number is good: that is report.py's job.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
import traceback

from bench import traffic
from bench.candidates import Candidate, Unavailable
from bench.topology import BenchTopology

# metric name -> (unit, higher is better)
METRICS = {
    "udp_flows_pps": ("packets/s", True),
    "udp_newflows_pps": ("packets/s", True),
    "tcp_conn_per_s": ("connections/s", True),
    "http_p50_us": ("µs", False),
    "http_p99_us": ("µs", False),
}


@dataclasses.dataclass
class Settings:
    mode: str = "quick"
    rounds: int = 2
    seconds: float = 1.0
    metrics: tuple[str, ...] = tuple(METRICS)


@dataclasses.dataclass
class CandidateResult:
    name: str
    label: str
    baseline: bool
    available: bool = True
    reason: str = ""
    runs: dict = dataclasses.field(default_factory=dict)  # metric -> [value per round]
    details: dict = dataclasses.field(default_factory=dict)  # metric -> [raw record per round]
    errors: list = dataclasses.field(default_factory=list)

    def record(self, metric: str, value: float, detail: dict) -> None:
        self.runs.setdefault(metric, []).append(value)
        self.details.setdefault(metric, []).append(detail)

    def median(self, metric: str) -> float | None:
        values = self.runs.get(metric)
        return statistics.median(values) if values else None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["medians"] = {m: self.median(m) for m in self.runs}
        return data


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_once(topo: BenchTopology, candidate: Candidate, result: CandidateResult,
                 settings: Settings, workdir: str) -> None:
    """Every metric of SETTINGS once for CANDIDATE (already started).

    For candidates with a director process (lvsuser), each record also carries the share of one
    CPU that process used during the metric: near 100% means the director is the limit, far
    below means something else is (the generator, veth, a timer or batching delay)."""
    for metric in settings.metrics:
        if metric == "http_p99_us" and "http_p50_us" in settings.metrics:
            continue  # one latency run feeds both percentiles
        cpu_before, wall_before = candidate.cpu_seconds(), time.monotonic()
        try:
            records = _measure_metric(topo, candidate, metric, settings, workdir)
        except traffic.ToolMissing:
            raise
        except Exception as exc:  # one metric failing must not hide the others
            result.errors.append(f"{metric}: {exc}")
            log(f"{candidate.name} {metric}: {exc}")
            continue
        cpu_after = candidate.cpu_seconds()
        for name, value, detail in records:
            if cpu_before is not None and cpu_after is not None:
                detail["director_cpu"] = round(
                    (cpu_after - cpu_before) / (time.monotonic() - wall_before), 3)
            result.record(name, value, detail)


def _measure_metric(topo, candidate, metric, settings, workdir) -> list[tuple[str, float, dict]]:
    if metric in ("udp_flows_pps", "udp_newflows_pps"):
        variant = "flows" if metric == "udp_flows_pps" else "newflows"
        run = traffic.packet_rate(topo, variant, candidate.udp_targets(topo), settings.seconds,
                                  workdir)
        return [(metric, run.delivered_pps, {
            "seconds": round(run.seconds, 3), "offered": run.offered,
            "offered_pps": round(run.offered_pps), "delivered": run.delivered,
            "delivered_seconds": {k: round(v, 3) for k, v in run.delivered_seconds.items()},
            "delivered_pps": round(run.delivered_pps)})]
    if metric == "tcp_conn_per_s":
        run = traffic.wrk(topo, candidate.http_target(topo), settings.seconds,
                          new_connections=True)
        return [(metric, run.requests_per_s, dataclasses.asdict(run))]
    if metric in ("http_p50_us", "http_p99_us"):
        run = traffic.wrk(topo, candidate.http_target(topo), settings.seconds,
                          new_connections=False)
        return [("http_p50_us", run.p50_us, dataclasses.asdict(run)),
                ("http_p99_us", run.p99_us, dataclasses.asdict(run))]
    raise ValueError(f"unknown metric {metric!r}")


def run_rounds(candidates: list[Candidate], settings: Settings, workdir: str,
               topo: BenchTopology) -> dict[str, CandidateResult]:
    results = {c.name: CandidateResult(c.name, c.label, c.baseline) for c in candidates}
    for round_no in range(1, settings.rounds + 1):
        for candidate in candidates:
            result = results[candidate.name]
            if not result.available:
                continue
            log(f"round {round_no}/{settings.rounds}: {candidate.name}")
            try:
                candidate.start(topo, workdir)
                measure_once(topo, candidate, result, settings, workdir)
            except Unavailable as exc:
                result.available, result.reason = False, str(exc)
                log(f"{candidate.name} not available: {exc}")
            except traffic.ToolMissing as exc:
                result.available, result.reason = False, str(exc)
            except Exception as exc:
                result.available = False
                result.reason = f"failed: {exc.__class__.__name__}: {exc}"
                log(f"{candidate.name} failed:\n{traceback.format_exc()}")
            finally:
                candidate.stop(topo)
    return results
