"""Reports of a benchmark run: JSON (everything), Markdown (medians and ratios), PNG (a plot).

Ratios are always candidate / baseline medians from the same run, for each baseline (kernel
forwarding, nftables DNAT, and kernel IPVS inside the guest for guest candidates). For latency,
lower is better, so the table also gives the added microseconds over kernel forwarding.

The issue's targets are evaluated here and reported, never asserted: met, missed (with the ratio
reached and what limits it, from the profile when one was taken), or not measured (and why).
"""
from __future__ import annotations

import json
import os

from bench.profile import diagnose, summarize
from bench.runner import METRICS

HOST_BASELINES = ("forward", "nft-dnat")

TARGETS = [
    # (text, candidate, metric, baseline, kind, threshold)
    ("NAT packet rate >= 1.5x nftables DNAT (64-byte UDP, 1,000 flows)",
     "lvsuser-nat-afpacket", "udp_flows_pps", "nft-dnat", "ratio", 1.5),
    ("DR packet rate >= 1.5x plain kernel forwarding (64-byte UDP, 1,000 flows)",
     "lvsuser-dr-afpacket", "udp_flows_pps", "forward", "ratio", 1.5),
    ("connections/s through NAT >= 1.0x nftables DNAT",
     "lvsuser-nat-afpacket", "tcp_conn_per_s", "nft-dnat", "ratio", 1.0),
    ("added p50 request latency through NAT <= 30 µs over plain forwarding",
     "lvsuser-nat-afpacket", "http_p50_us", "forward", "added", 30.0),
]


def _fmt(value, metric: str) -> str:
    if value is None:
        return "–"
    if metric.endswith("_us"):
        return f"{value:,.0f} µs" if value >= 100 else f"{value:.1f} µs"
    return f"{value:,.0f}"


def _spread(runs) -> str:
    if not runs or len(runs) < 3:
        return ""
    ordered = sorted(runs)
    middle = ordered[len(ordered) // 2]
    return f" ±{(ordered[-1] - ordered[0]) / 2 / middle:.0%}" if middle else ""


def _median(report: dict, name: str, metric: str):
    cand = report["candidates"].get(name)
    if not cand or not cand["available"]:
        return None
    return cand["medians"].get(metric)


def _limit(report: dict, name: str, metric: str) -> str:
    """What we know about why NAME fell short on METRIC: its CPU use there, and the profile."""
    facts = []
    details = report["candidates"].get(name, {}).get("details", {}).get(metric, [])
    shares = sorted(d["director_cpu"] for d in details if "director_cpu" in d)
    if shares:
        share = shares[len(shares) // 2]
        fact = f"the director process used {share:.0%} of one CPU during this metric"
        rates = [(d["delivered_pps"], d["offered_pps"]) for d in details if d.get("offered_pps")]
        if rates:
            delivered, offered = sorted(rates)[len(rates) // 2]
            fact += f"; {diagnose(share, delivered, offered)}"
        elif share > 0.85:
            fact += " (saturated: the director's own work is the limit)"
        else:
            fact += (" (not saturated: the time goes to waiting -- batching, a timer, wakeups -- "
                     "not to the director's own work)")
        facts.append(fact)
    profile = report.get("profiles", {}).get(name)
    if profile:
        facts.append("profile of a packet-rate run: " + profile["summary"])
    else:
        facts.append("no profile in this mode (`python3 -m bench --full` takes one)")
    return "; ".join(facts)


def evaluate_targets(report: dict) -> list[dict]:
    verdicts = []
    for text, name, metric, baseline, kind, threshold in TARGETS:
        value, base = _median(report, name, metric), _median(report, baseline, metric)
        entry = {"target": text, "candidate": name, "metric": metric, "baseline": baseline}
        if value is None or base is None or (kind == "ratio" and base == 0):
            missing = name if value is None else baseline
            cand = report["candidates"].get(missing, {})
            why = cand.get("reason") or "; ".join(cand.get("errors", [])) or "no data"
            entry.update(status="not measured", why=f"{missing}: {why}")
        elif kind == "ratio":
            ratio = value / base
            entry.update(status="met" if ratio >= threshold else "missed", reached=round(ratio, 3))
        else:
            added = value - base
            entry.update(status="met" if added <= threshold else "missed", reached=round(added, 1))
        if entry["status"] == "missed":
            entry["limit"] = _limit(report, name, metric)
        verdicts.append(entry)
    microbench = report.get("conntab")
    conntab = {"target": "connection table <= 64 bytes/entry, 10M entries, flat lookups"}
    if microbench:
        conntab.update(microbench)
    else:
        conntab.update(status="not measured",
                       why="run `python3 -m pytest bench/test_bench_conntab.py` (writes "
                           "bench/results/conntab.json)")
    verdicts.append(conntab)
    return verdicts


def markdown(report: dict) -> str:
    meta = report["meta"]
    metrics = [m for m in METRICS if any(m in c["runs"] for c in report["candidates"].values())]
    lines = [
        f"# lvsuser benchmark ({meta['mode']} mode)",
        "",
        f"{meta['date']} on `{meta['host']}`, commit `{meta['commit']}`; {meta['rounds']} rounds of "
        f"{meta['seconds']} s per metric, candidates alternating each round; medians shown. "
        f"Made by `{meta['command']}`.",
        "",
        "| candidate | " + " | ".join(f"{m} ({METRICS[m][0]})" for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for cand in report["candidates"].values():
        if not cand["available"] and not cand["runs"]:
            lines.append(f"| {cand['label']} | not available: {cand['reason']} |"
                         + " |" * (len(metrics) - 1))
            continue
        cells = [_fmt(cand["medians"].get(m), m) + _spread(cand["runs"].get(m)) for m in metrics]
        lines.append(f"| {cand['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Rounds with 3 or more runs show the spread (max - min) / 2 / median as ±%."]
    loss_rows = []
    for cand in report["candidates"].values():
        cells = []
        for m in ("udp_flows_pps", "udp_newflows_pps"):
            details = cand["details"].get(m) or []
            ratios = sorted(d["delivered_pps"] / d["offered_pps"] for d in details
                            if d.get("offered_pps"))
            cells.append(f"{ratios[len(ratios) // 2]:.1%}" if ratios else "–")
        if any(c != "–" for c in cells):
            loss_rows.append(f"| {cand['label']} | " + " | ".join(cells) + " |")
    if loss_rows:
        lines += ["", "Delivered / offered packets (below 100%: the path dropped; the generator "
                      "shares the client's CPU with veth delivery, so offered also falls when "
                      "the path is slow):", "",
                  "| candidate | udp_flows | udp_newflows |", "|---|---|---|"] + loss_rows
    if any(c.get("guest") and c["runs"] for c in report["candidates"].values()):
        lines += ["", "Guest rows: TCG emulation, many times slower than the host, where every "
                      "counter read takes a good part of a second; delivered/offered above 100% "
                      "there is that timing error. Compare guest rows only with each other."]
    for baseline in HOST_BASELINES + tuple(report.get("guest_baselines", ())):
        base = report["candidates"].get(baseline)
        if not base or not base["runs"]:
            continue
        lines += ["", f"Ratios to **{base['label']}** (higher is better for rates; for latency, "
                      "the ratio and the added µs):", "",
                  "| candidate | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for cand in report["candidates"].values():
            if cand["name"] == baseline or not cand["runs"]:
                continue
            if cand.get("guest", False) != base.get("guest", False):
                continue  # only ratios within one machine mean anything
            cells = []
            for m in metrics:
                value, ref = cand["medians"].get(m), base["medians"].get(m)
                if value is None or not ref:
                    cells.append("–")
                elif m.endswith("_us"):
                    cells.append(f"{value / ref:.2f}x ({value - ref:+.0f} µs)")
                else:
                    cells.append(f"{value / ref:.2f}x")
            lines.append(f"| {cand['label']} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (reported, not asserted)", ""]
    for verdict in report["targets"]:
        line = f"- **{verdict.get('status', '?')}**: {verdict['target']}"
        if "reached" in verdict:
            unit = " µs added" if verdict["metric"].endswith("_us") else "x"
            line += f" — reached {verdict['reached']}{unit}"
        if verdict.get("why"):
            line += f" — {verdict['why']}"
        if verdict.get("detail"):
            line += f" — {verdict['detail']}"
        lines.append(line)
        if verdict.get("limit"):
            lines.append(f"  - what limits it: {verdict['limit']}")
    conntab = report.get("conntab", {}).get("sizes")
    if conntab:
        when = report.get("micro_measured", {}).get("conntab", "?")
        lines += ["", "## Connection table (bench/test_bench_conntab.py)", "",
                  f"Measured {when}; resident bytes per entry include the hash heads.", "",
                  "| core | entries | bytes/entry | insert ns | lookup ns | expire ns | longest expire() ms |",
                  "|---|---|---|---|---|---|---|"]
        for impl, sizes in conntab.items():
            for size, m in sorted(sizes.items(), key=lambda item: int(item[0])):
                lines.append(f"| {impl} | {int(size):,} | {m.get('bytes_per_entry')} | "
                             f"{m.get('insert_ns')} | {m.get('lookup_ns')} | {m.get('expire_ns')} | "
                             f"{m.get('expire_longest_call_ms', '–')} |")
    rewrite = report.get("rewrite")
    if rewrite:
        when = report.get("micro_measured", {}).get("rewrite", "?")
        lines += ["", "## Per-packet cost in the core (bench/test_bench_rewrite.py)", "",
                  "One packet of an established UDP connection through `Core.process` "
                  f"(median ns, including the Python call; measured {when}):", "",
                  "| packet | ns |", "|---|---|"]
        lines += [f"| {name} | {ns:,.0f} |" for name, ns in sorted(rewrite.items())]
    unavailable = [c for c in report["candidates"].values() if not c["available"]]
    if unavailable:
        lines += ["", "## Not available in this run", ""]
        lines += [f"- {c['label']}: {c['reason']}" for c in unavailable]
    errors = [(c["label"], e) for c in report["candidates"].values() for e in c["errors"]]
    if errors:
        lines += ["", "## Errors during measurement", ""]
        lines += [f"- {label}: {e}" for label, e in errors]
    for name, profile in report.get("profiles", {}).items():
        lines += ["", f"## Profile: {name}", "", profile["summary"], "", "```",
                  profile["top"].rstrip(), "```"]
    lines += ["", "Raw numbers per round, offered vs delivered packets, wrk details: report.json."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("udp_flows_pps", "64-byte UDP, 1,000 flows (pkt/s)"),
              ("udp_newflows_pps", "64-byte UDP, new flows (pkt/s)"),
              ("tcp_conn_per_s", "TCP connections/s"),
              ("http_p50_us", "request latency p50 (µs)")]
    everything = list(report["candidates"].values())  # all of them: a missing bar says "n/a"
    # Host and guest on separate rows: the emulated guest is ~10x slower, one scale would hide it.
    groups = [g for g in ([c for c in everything if not c.get("guest")],
                          [c for c in everything if c.get("guest")]) if g]
    heights = [max(4, len(g)) for g in groups]
    fig, rows = plt.subplots(len(groups), len(panels), squeeze=False,
                             gridspec_kw={"height_ratios": heights},
                             figsize=(4.2 * len(panels), 0.45 * sum(heights) + 1.5))
    for cands, axes in zip(groups, rows):
        for ax, (metric, title) in zip(axes, panels):
            values = [c["medians"].get(metric) or 0 for c in cands]
            colors = ["#888888" if c["baseline"] else "#3070b0" for c in cands]
            ax.barh(range(len(cands)), values, color=colors)
            for i, cand in enumerate(cands):
                runs = cand["runs"].get(metric, [])
                ax.plot(runs, [i] * len(runs), "k.", markersize=3)  # each round: the spread
                if not runs:
                    ax.text(0, i, " n/a" if cand["available"] else " not available",
                            va="center", fontsize=7, color="#aa3333")
            ax.set_yticks(range(len(cands)))
            ax.set_yticklabels([c["label"] for c in cands] if ax is axes[0] else [""] * len(cands),
                               fontsize=8)
            ax.invert_yaxis()
            ax.set_title(title, fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"lvsuser benchmark, {report['meta']['mode']} mode, {report['meta']['date']} "
                 "(grey: baselines; dots: each round)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out_dir: str) -> dict[str, str]:
    """Write report.json, report.md and report.png into OUT_DIR; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    for profile in report.get("profiles", {}).values():  # the wording follows this version
        if {"busy", "delivered_pps", "offered_pps", "shares"} <= set(profile):
            profile["summary"] = summarize(profile["busy"], profile["delivered_pps"],
                                           profile["offered_pps"], profile["shares"])
    report["targets"] = evaluate_targets(report)
    paths = {kind: os.path.join(out_dir, f"report.{kind}") for kind in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, sort_keys=False)
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
    try:
        plot(report, paths["png"])
    except ImportError as exc:
        del paths["png"]
        report.setdefault("notes", []).append(f"no plot: {exc}")
    return paths
