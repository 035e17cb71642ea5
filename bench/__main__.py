"""`python3 -m bench [--quick|--full] ...` (also `lvsuser bench`): the side-by-side benchmark.

Builds its own namespaces (bench/topology.py), starts nginx on both real servers, runs every
candidate round by round (bench/runner.py), optionally profiles lvsuser and runs the kernel-IPVS
comparison inside the QEMU guest (bench/guest.py), and writes JSON, Markdown and PNG reports
(bench/report.py) under bench/results/<time>/ and bench/results/latest/; `--publish` also copies
them to bench/latest/, the committed copy the README points at.
"""
from __future__ import annotations

import argparse
import json
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

PROFILED = ("lvsuser-nat-afpacket", "lvsuser-dr-afpacket")

MODES = {
    # mode: (rounds, seconds per metric)
    "quick": (2, 1.0),
    "full": (5, 3.0),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Benchmark lvsuser against kernel forwarding, nftables DNAT and kernel IPVS.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="2 rounds of 1 s per metric (the default; what CI runs)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="5 rounds of 3 s, perf profiles of lvsuser NAT and DR, and the QEMU guest")
    parser.set_defaults(mode="quick")
    parser.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    parser.add_argument("--seconds", type=float, help="override the mode's seconds per metric")
    parser.add_argument("--only", metavar="NAME,...",
                        help="run only these candidates (names as in the report, e.g. "
                             "forward,nft-dnat,lvsuser-nat-afpacket)")
    parser.add_argument("--metrics", metavar="NAME,...", help="run only these metrics")
    parser.add_argument("--guest", choices=("yes", "no"), default=None,
                        help="kernel IPVS inside the QEMU guest (default: yes in full mode)")
    parser.add_argument("--profile", choices=("yes", "no"), default=None,
                        help="perf profile of lvsuser NAT (default: yes in full mode)")
    parser.add_argument("--micro", choices=("yes", "no"), default=None,
                        help="run the core microbenchmarks first, 10^7 entries included, so the "
                             "report has them (default: yes in full mode)")
    parser.add_argument("--out", help="write the reports here instead of bench/results/<time>")
    parser.add_argument("--publish", action="store_true",
                        help="also copy the reports to bench/latest/ (the committed copy)")
    parser.add_argument("--inside-guest", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _run_microbenchmarks() -> None:
    """The connection-table and rewrite microbenchmarks; they leave their summaries in
    bench/results/ for the report. A failure is reported by pytest and does not stop the run."""
    env = dict(os.environ, LVSUSER_BENCH_HUGE="1")
    print("[bench] microbenchmarks: bench/test_bench_conntab.py bench/test_bench_rewrite.py",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "bench/test_bench_conntab.py", "bench/test_bench_rewrite.py"],
                   cwd=REPO, env=env, timeout=1800, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench import candidates as cand_mod, guest, profile, report, runner, traffic
    from bench.topology import BenchTopology

    if os.geteuid() != 0:
        print("python3 -m bench: needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    rounds, seconds = MODES[args.mode]
    settings = runner.Settings(mode=args.mode, rounds=args.rounds or rounds,
                               seconds=args.seconds or seconds)
    if args.metrics:
        wanted = tuple(m.strip() for m in args.metrics.split(","))
        unknown = [m for m in wanted if m not in runner.METRICS]
        if unknown:
            print(f"python3 -m bench: unknown metric(s) {', '.join(unknown)}; "
                  f"choose from {', '.join(runner.METRICS)}", file=sys.stderr)
            return 2
        settings.metrics = wanted
    if args.inside_guest:
        return _inside_guest(settings)
    candidates = cand_mod.all_candidates()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        names = {c.name for c in candidates}
        unknown = [n for n in wanted if n not in names]
        if unknown:
            print(f"python3 -m bench: unknown candidate(s) {', '.join(unknown)}; "
                  f"choose from {', '.join(sorted(names))}", file=sys.stderr)
            return 2
        candidates = [c for c in candidates if c.name in wanted]
    use_guest = (args.guest or ("yes" if args.mode == "full" else "no")) == "yes"
    use_profile = (args.profile or ("yes" if args.mode == "full" else "no")) == "yes"
    use_micro = (args.micro or ("yes" if args.mode == "full" else "no")) == "yes"

    stamp = datetime.datetime.now(datetime.timezone.utc)
    out_dir = args.out or os.path.join(HERE, "results", stamp.strftime("%Y%m%dT%H%M%SZ"))
    report_data = {
        "meta": {
            "mode": settings.mode, "rounds": settings.rounds, "seconds": settings.seconds,
            "date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "kernel": platform.release(), "cpus": os.cpu_count(), "commit": _git_commit(),
            "command": "python3 -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "candidates": {}, "profiles": {},
    }
    if use_micro:
        _run_microbenchmarks()
    workdir = tempfile.mkdtemp(prefix="lvsbench-")
    try:
        try:
            with BenchTopology() as topo, traffic.HttpServers(topo, workdir):
                results = runner.run_rounds(candidates, settings, workdir, topo)
                report_data["candidates"] = {n: r.to_json() for n, r in results.items()}
                if use_profile:  # the candidates the targets are about
                    for cand in candidates:
                        if cand.name in PROFILED and results[cand.name].available:
                            runner.log(f"profiling {cand.name}")
                            report_data["profiles"][cand.name] = profile.profile_candidate(
                                topo, cand, settings, workdir)
        except KeyboardInterrupt:
            print("python3 -m bench: interrupted; namespaces removed, no report written",
                  file=sys.stderr)
            return 130
        except traffic.ToolMissing as exc:
            print(f"python3 -m bench: {exc}", file=sys.stderr)
            return 2
        if use_guest:
            guest_part = guest.run(settings, workdir)
            report_data["candidates"].update(guest_part["candidates"])
            report_data["guest_baselines"] = guest_part["baselines"]
            report_data["guest"] = guest_part["meta"]
        for key in ("conntab", "rewrite"):  # written by the microbenchmarks
            summary = os.path.join(HERE, "results", f"{key}.json")
            if os.path.exists(summary):
                with open(summary) as f:
                    report_data[key] = json.load(f)
                measured = datetime.datetime.fromtimestamp(os.path.getmtime(summary),
                                                           datetime.timezone.utc)
                report_data.setdefault("micro_measured", {})[key] = measured.strftime(
                    "%Y-%m-%d %H:%M UTC")
        paths = report.write(report_data, out_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    latest = os.path.join(HERE, "results", "latest")
    if not args.out:  # a run told where to write (tests, scripts) leaves bench/results alone
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(out_dir, latest)
    if args.publish:
        published = os.path.join(HERE, "latest")
        os.makedirs(published, exist_ok=True)
        for path in paths.values():
            shutil.copy(path, published)
    with open(paths["md"]) as f:
        sys.stdout.write(f.read())
    print(f"\nreports: {', '.join(paths.values())}", file=sys.stderr)
    return 0


def _inside_guest(settings) -> int:
    """The guest half of bench/guest.py: measure, print the JSON report between markers."""
    import json

    from bench import candidates as cand_mod, guest, runner, traffic
    from bench.topology import BenchTopology

    import pyroute2.config
    # Under TCG a pyroute2 helper process (netns creation, IPRoute(netns=...)) can take longer
    # than pyroute2's 2 s default to answer, which it treats as a hung child.
    pyroute2.config.default_communicate_timeout = 60
    pyroute2.config.default_create_socket_timeout = 120

    candidates = cand_mod.guest_candidates()
    workdir = tempfile.mkdtemp(prefix="lvsbench-")
    try:
        with BenchTopology() as topo, traffic.HttpServers(topo, workdir):
            results = runner.run_rounds(candidates, settings, workdir, topo)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = {"meta": {"kernel": platform.release(), "rounds": settings.rounds,
                     "seconds": settings.seconds},
            "candidates": {n: r.to_json() for n, r in results.items()}}
    print(guest.BEGIN)
    print(json.dumps(data))
    print(guest.END, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
