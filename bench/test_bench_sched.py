"""One scheduling decision per scheduler, with 10, 1,000 and 10,000 dests (the C schedulers).

Each benchmark round runs BATCH decisions inside C (SchedHarness.schedule_many, no GIL, no Python
per decision), so the figures are per BATCH decisions.  Sources vary per round only; the point is
how a decision's cost grows with the number of dests:

* table and cursor schedulers (rr, wrr, dh, sh, mh, lblc on a cached address) must stay flat:
  the per-packet work is a hash and an index, or one step of a cursor;
* the least-connection family (lc, wlc, sed, nq, fo, ovf, twos, and lblcr/lblc when they pick)
  walks the list once per decision, as the kernel: linear, and no worse.  Linear is judged from
  1,000 to 10,000 dests (below that a decision is a few nanoseconds of fixed cost), with slack for
  the dest array (128 bytes a dest, 1.3 MB at 10,000) outgrowing the CPU caches: measured here,
  the cost per dest walked grows about 3x between the two sizes for that reason alone.

mh's table has 4093 entries (the kernel's default), so it is measured at 4093 instead of 10,000
dests, as the kernel refuses more.  ``test_sched_scaling`` checks the growth from the smallest to
the largest size; run with ``--benchmark-only`` for the timing table.
"""
from __future__ import annotations

import ipaddress
import time

import pytest

from lvsuser import model

SIZES = [10, 1000, 10000]
BATCH = 1000
SCHEDULERS = ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "twos", "dh", "sh", "mh",
              "lblc", "lblcr"]
FLAT = {"rr", "wrr", "dh", "sh", "mh", "lblc", "lblcr"}
FLAT_FACTOR = 4.0        # largest size may cost at most this much more than the smallest
LINEAR_SLACK = 5.0       # the walkers: per-dest cost may grow this much (caches), no more

_timings: dict = {}


def _csched():
    try:
        import lvsuser._fastpath as compiled
        if hasattr(compiled, "SchedHarness"):
            return compiled
    except ImportError:
        pass
    from tests.unit.test_sched_cases import _standalone_harness
    return _standalone_harness()


def _service(name, size):
    size = min(size, 4093) if name == "mh" else size
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                        addr=ipaddress.ip_address("198.18.0.10"), port=80, scheduler=name)
    for i in range(size):
        addr = ipaddress.ip_address(int(ipaddress.ip_address("198.18.64.0")) + i)
        svc.dests.append(model.Dest(addr=addr, port=80, weight=1 + i % 4,
                                    activeconns=i % 7, inactconns=i % 13))
    return svc


def _best_of(harness, runs=5):
    best = float("inf")
    client = ipaddress.ip_address("198.18.2.1")
    vip = ipaddress.ip_address("198.18.0.10")
    for _ in range(runs):
        start = time.perf_counter()
        harness.schedule_many(model.AF_INET, model.IPPROTO_TCP, client, 40000, vip, 80, BATCH, 1.0)
        best = min(best, time.perf_counter() - start)
    return best / BATCH


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_bench_sched_decision(benchmark, name, size):
    csched = _csched()
    harness = csched.SchedHarness(name, _service(name, size))
    client = ipaddress.ip_address("198.18.2.1")
    vip = ipaddress.ip_address("198.18.0.10")
    benchmark.extra_info.update({"dests": min(size, 4093) if name == "mh" else size,
                                 "decisions_per_round": BATCH})
    result = benchmark(harness.schedule_many, model.AF_INET, model.IPPROTO_TCP, client, 40000,
                       vip, 80, BATCH, 1.0)
    assert result >= 0
    _timings.setdefault(name, {})[size] = _best_of(harness)


def test_sched_scaling():
    if set(_timings) != set(SCHEDULERS) or any(len(v) != len(SIZES) for v in _timings.values()):
        pytest.skip("run together with test_bench_sched_decision")
    problems = []
    for name, by_size in _timings.items():
        if name in FLAT:
            small, large = by_size[SIZES[0]], by_size[SIZES[-1]]
            if large > small * FLAT_FACTOR:
                problems.append(f"{name}: {small * 1e9:.0f} ns -> {large * 1e9:.0f} ns, not flat")
        else:
            small, large = by_size[SIZES[1]], by_size[SIZES[-1]]
            growth = (SIZES[-1] / SIZES[1]) * LINEAR_SLACK
            if large > small * growth:
                problems.append(f"{name}: {small * 1e9:.0f} ns -> {large * 1e9:.0f} ns, worse than linear")
    assert not problems, problems
