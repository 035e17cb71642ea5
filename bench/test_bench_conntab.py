"""Connection table at scale: insert, lookup and expire from 10^4 to 10^7 entries, bytes per entry.

Theory of operation
-------------------
Everything goes through the core's public API, as traffic would: an insert is the first UDP packet
of a new flow (lookup miss, scheduling, a new entry), a lookup is a further packet of an existing
flow in NAT mode (NAT entries are linked in both hash tables, the in-hash and the reply hash, so
bytes per entry is the worst case; the rewrite costs the same at every size), expiry is ``expire(now)``
past the UDP timeout, called until the table is empty (the longest single call is recorded: it
is the stall a packet could see). Bytes per entry is the growth of the process's resident memory from before
the core was made to a full table, divided by the entries, so a table allocated up front counts
too. At 10^4 entries that figure is mostly allocator noise; the target is read at the largest size.

"Flat lookups" means the cost of a lookup does not grow with the table: the median lookup at the
largest size is compared with the smallest. Each size's numbers are also written to
bench/results/conntab.json, which `python3 -m bench` puts into its report with the verdict on the
issue's target (<= 64 bytes/entry, 10^7 entries held, flat lookups).

Sizes: 10^4..10^6 by default; LVSUSER_BENCH_HUGE=1 adds 10^7 (about a minute and the memory of
ten million entries). The Python core stops at 10^5: it is there for contrast, not for scale.

Run: python3 -m pytest bench/test_bench_conntab.py --benchmark-only
"""
import ctypes
import ctypes.util
import gc
import json
import os
import time

import pytest

from bench import coresetup as cs

SIZES = [10**4, 10**5, 10**6] + ([10**7] if os.environ.get("LVSUSER_BENCH_HUGE") == "1" else [])
PY_MAX = 10**5
LOOKUP_SAMPLE = 10_000
UDP_TIMEOUT = 300  # the kernel's default; config() publishes default timeouts
TARGET_BYTES = 64
FLAT_FACTOR = 2.0  # largest-size lookup may cost at most this much more than the smallest
SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "conntab.json")

_results: dict = {}  # impl -> size -> measurements


def _release_free_memory() -> None:
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc_trim(0)


def _impl_name(core_cls) -> str:
    return "py" if core_cls.__module__ == "lvsuser.pyfastpath" else "c"


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if not _results:
        return
    summary = {"sizes": _results}
    chosen = "c" if "c" in _results else next(iter(_results))
    sizes = _results[chosen]
    largest, smallest = max(sizes, key=int), min(sizes, key=int)
    bytes_per_entry = sizes[largest].get("bytes_per_entry")
    flat = (sizes[largest].get("lookup_ns") or 0) / (sizes[smallest].get("lookup_ns") or 1)
    problems = []
    if int(largest) < 10**7:
        problems.append(f"largest size measured {int(largest):,} (set LVSUSER_BENCH_HUGE=1)")
    if bytes_per_entry is None or bytes_per_entry > TARGET_BYTES:
        problems.append(f"more than {TARGET_BYTES} bytes/entry")
    if flat > FLAT_FACTOR:
        problems.append(f"lookups {flat:.2f}x slower at {int(largest):,} than at "
                        f"{int(smallest):,}")
    summary.update(core=chosen, status="met" if not problems else "missed",
                   detail=(f"{chosen} core: {bytes_per_entry} bytes/entry at {int(largest):,} "
                           f"entries, lookup {flat:.2f}x from {int(smallest):,} to "
                           f"{int(largest):,}") + ("; " + "; ".join(problems) if problems else ""))
    if chosen == "py":
        summary["status"] = "not measured"
        summary["why"] = "only the Python core was available (the C core is the one with targets)"
    os.makedirs(os.path.dirname(SUMMARY), exist_ok=True)
    with open(SUMMARY, "w") as f:
        json.dump(summary, f, indent=1)


def _params():
    params = []
    for impl in cs.implementations():
        for size in SIZES:
            marks = list(impl.marks)
            if impl.id == "py" and size > PY_MAX:
                continue
            params.append(pytest.param(impl.values[0], size, id=f"{impl.id}-{size:.0e}",
                                       marks=marks))
    return params


@pytest.mark.parametrize("core_cls,size", _params())
def test_conntab(benchmark, core_cls, size):
    record = _results.setdefault(_impl_name(core_cls), {}).setdefault(str(size), {})
    _release_free_memory()  # so an earlier test's freed pages do not hide this table's growth
    rss_before = cs.rss_bytes()
    core = core_cls(max_conns=size + 1024)
    core.publish(cs.config("nat"))  # both hash tables in use: the memory worst case

    started = time.perf_counter()
    forwarded = cs.open_flows(core, size)
    insert_seconds = time.perf_counter() - started
    assert forwarded == size and core.conn_count() == size, core.counters()
    record["bytes_per_entry"] = round((cs.rss_bytes() - rss_before) / size, 1)
    record["insert_ns"] = round(insert_seconds / size * 1e9, 1)

    # Lookups: packets of flows spread over the whole table, a fixed sample per size.
    step = max(1, size // LOOKUP_SAMPLE)
    frames = [bytes(cs.udp_frame(*cs.flow_address(i))) for i in range(0, size, step)]
    frames = frames[:LOOKUP_SAMPLE]

    def lookups(process=core.process):  # bound now: `core` is deleted at the end to free it
        for frame in frames:
            process(frame, cs.CLIENT_IF, cs.NOW)

    benchmark.pedantic(lookups, rounds=5, iterations=1, warmup_rounds=1)
    record["lookup_ns"] = round(benchmark.stats.stats.median / len(frames) * 1e9, 1)
    assert core.conn_count() == size  # lookups of existing flows created nothing

    # The C core's expire() sweeps a bounded number of slots per call (so a driver never
    # stalls); the Python core's sweeps everything. Call until empty, as a driver's timer would,
    # and keep the longest single call: that is the stall a packet could see.
    later = cs.NOW + UDP_TIMEOUT + 1
    gone, calls, longest = 0, 0, 0.0
    started = time.perf_counter()
    while core.conn_count() and calls < size // 1000 + 64:
        call_started = time.perf_counter()
        gone += core.expire(later)
        longest = max(longest, time.perf_counter() - call_started)
        calls += 1
    record["expire_ns"] = round((time.perf_counter() - started) / size * 1e9, 1)
    record["expire_calls"] = calls
    record["expire_longest_call_ms"] = round(longest * 1e3, 2)
    assert gone == size and core.conn_count() == 0
    benchmark.extra_info.update(record)
    del core
