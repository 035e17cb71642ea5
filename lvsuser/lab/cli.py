"""`lvsuser lab {nat,tun,dr} [--keep] [--broken arp] [--requests N]` and `lvsuser lab down`.

Rebuilds one of the classic guide's labs in network namespaces on this machine, sends real
requests through it, shows which real server answered each and the path of a request hop by
hop, and removes everything again (unless --keep).
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections import Counter

from lvsuser.lab import lab as lab_module
from lvsuser.lab import trace
from lvsuser.lab.lab import Lab, LabError
from lvsuser.lab.plan import Plan, plan_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser lab",
        description="Build the classic LVS guide's NAT, TUN or DR lab in network namespaces, "
                    "send requests through it and show the packet path.")
    parser.add_argument("mode", choices=("nat", "tun", "dr", "down"),
                        help="lab to run, or 'down' to remove labs kept with --keep (and any "
                             "left behind by a killed lab)")
    parser.add_argument("id", nargs="?", help="(down only) the lab id to remove; default: all")
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab running and print how to step in")
    parser.add_argument("--broken", choices=("arp",),
                        help="dr: first show what happens when real servers answer ARP for the VIP")
    parser.add_argument("--requests", type=int, default=4, metavar="N",
                        help="requests the client sends (default 4)")
    parser.add_argument("--captures", metavar="DIR",
                        help="also save each host's raw capture (JSON lines, one frame each) in DIR")
    return parser


# --------------------------------------------------------------------------- printing

def print_hosts(plan: Plan, lab: Lab) -> None:
    print(f"  {'host':<9}{'namespace':<24}{'address':<20}guide's address")
    for host in plan.hosts:
        for number, interface in enumerate(host.interfaces):
            name = host.role if number == 0 else ""
            namespace = lab.ns_name(host.role) if number == 0 else ""
            print(f"  {name:<9}{namespace:<24}{interface.address + '/' + str(interface.prefixlen):<20}"
                  f"{interface.guide_address}  [{interface.name}]")
    print(f"  VIP {plan.vip} (guide: {plan.guide_vip})"
          + (f", on the director's {plan.vip_on_director}" if plan.vip_on_director else ""))


def print_answers(plan: Plan, answers: list[dict]) -> Counter:
    address = {h.role: h.interfaces[0].address for h in plan.real_servers}
    tally: Counter = Counter()
    for item in answers:
        if item["error"]:
            text = f"no answer ({item['error']})"
        else:
            text = f"{item['answer']:<4} ({address.get(item['answer'], '?')})"
            tally[item["answer"]] += 1
        print(f"  {item['n']:>2}  -> {text}   {item['ms']} ms")
    return tally


def print_path(lab: Lab, answers: list[dict], frames: list[trace.Frame]) -> None:
    first = next((a for a in answers if a["local_port"] and not a["error"]), None)
    if first is None:
        print("  (no request got through, so there is no path to draw)")
        return
    print(f"packet path of request {first['n']} (client port {first['local_port']}, answered by "
          f"{first['answer']}), as captured on each hop:")
    for line in trace.render_request(frames, first["local_port"], lab.namer):
        print(line)


def summary_line(plan: Plan, tally: Counter, answers: list[dict]) -> str:
    wanted = {h.role for h in plan.real_servers}
    failed = sum(1 for a in answers if a["error"])
    if set(tally) == wanted and not failed:
        return (f"both real servers answered ({', '.join(f'{k}: {tally[k]}' for k in sorted(tally))}),"
                f" round robin as `-s rr` says")
    parts = [f"{k}: {tally[k]}" for k in sorted(tally)]
    if failed:
        parts.append(f"{failed} without answer")
    return "NOT all real servers answered (" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------- the run

def configure(lab: Lab, plan: Plan) -> None:
    print(f"\ndirector {lab.ns['director']} (guide step 2):")
    print("  echo 1 > /proc/sys/net/ipv4/ip_forward")
    if plan.vip_on_director:
        print(f"  VIP {plan.vip}/32 on {plan.vip_on_director}")
    print(f"  lvsuser run --control {lab.control} &")
    lab.start_director()
    for args in plan.ipvsadm:
        print(f"  lvsuser ipvsadm {' '.join(args)}")
        lab.ipvsadm(args)
    print("real servers (guide step 3):")
    for host in plan.real_servers:
        print(f"  {host.role}: lvsuser realserver {' '.join(plan.realserver_args)}")
    lab.configure_real_servers()
    lab.start_http_servers()
    for note in plan.notes:
        print(textwrap.fill(note, width=96, initial_indent="  note: ",
                            subsequent_indent="        "))


def run_requests(lab: Lab, plan: Plan, count: int) -> tuple[list[dict], list[trace.Frame]]:
    lab.start_sniffers()
    try:
        print(f"\nclient -> http://{plan.vip}:{plan.port}/  ({count} requests, one connection each)")
        answers = lab.send_requests(count)
        time.sleep(0.2)  # let the last frames reach the capture files
    finally:
        lab.stop_sniffers()
    return answers, lab.captured_frames()


def broken_arp_demo(lab: Lab, plan: Plan, count: int) -> None:
    """DR with the ARP step left out: real servers answer ARP for the VIP."""
    print("\n=== broken: the real servers answer ARP for the VIP (the guide's arp_ignore/"
          "arp_announce lines left out) ===")
    for host in plan.real_servers:
        lab.set_arp(host.role, 0, 0)
    check = lab.realserver("rs1", "dr", "--check")
    print("  rs1$ lvsuser realserver dr --check")
    for line in check.stdout.strip().splitlines():
        print(f"    {line}")
    for attempt in range(1, 6):
        lab.forget_vip_neighbour()
        answers, frames = run_requests(lab, plan, count)
        print_answers(plan, answers)
        print("  ARP for the VIP, as the client saw it:")
        for line in trace.arp_exchanges(frames, plan.vip, lab.namer):
            print(line)
        chosen = lab.client_vip_neighbour()
        owner = plan.owner_of_mac().get((chosen or "").lower(), chosen or "nobody")
        ports = {a["local_port"] for a in answers if a["local_port"]}
        seen = sum(1 for f in frames if f.host == "director" and f.direction == "in"
                   and _is_syn_from(f, ports))
        print(f"  the client sends VIP traffic to {owner}'s MAC ({chosen}); the director saw "
              f"{seen} of {len(ports)} connection attempts")
        if owner != "director":
            print(f"  => the client reaches {owner} directly, past the director: no load "
                  f"balancing, and no failover if {owner} goes down")
            break
        print(f"  (attempt {attempt}: the director's ARP reply happened to arrive first; "
              f"at the next ARP refresh it may not. Trying again.)")
    print("\n=== fixed: lvsuser realserver dr --vip VIP on each real server ===")
    for host in plan.real_servers:
        result = lab.realserver(host.role, *plan.realserver_args)
        if result.returncode != 0:
            raise LabError(f"realserver on {host.role}: {result.stderr.strip()}")
        print(f"  {host.role}: {result.stdout.strip().splitlines()[0]}")
    print("  client: its stale ARP entry for the VIP is dropped (it would expire by itself)")
    lab.forget_vip_neighbour()


def _is_syn_from(frame: trace.Frame, ports: set) -> bool:
    try:
        _, tcp = trace.innermost_tcp(frame.decode())
    except Exception:
        return False
    return tcp is not None and tcp.sport in ports and int(tcp.flags) & 0x12 == 0x02


def run_lab(mode: str, keep: bool, broken: str | None, count: int,
            captures: str | None = None) -> int:
    plan = plan_for(mode)
    if broken == "arp" and mode != "dr":
        print("lvsuser lab: --broken arp shows a DR problem; use `lvsuser lab dr --broken arp`",
              file=sys.stderr)
        return 2
    if not 1 <= count <= 100:
        print("lvsuser lab: --requests must be between 1 and 100", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("lvsuser lab: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    started = time.monotonic()
    mapping = "192.168.137.x -> 198.18.137.x"
    if "outside" in plan.networks:
        mapping += ", 172.20.10.x -> 198.19.10.x"
    print(f"{plan.title} lab: the guide's {mode.upper()} setup in network namespaces")
    print(f"(the guide's addresses mapped into 198.18.0.0/15: {mapping})")
    status = 1
    try:
        with Lab(plan, keep=keep) as lab:
            lab.build()
            print_hosts(plan, lab)
            configure(lab, plan)
            if broken == "arp":
                broken_arp_demo(lab, plan, count)
            answers, frames = run_requests(lab, plan, count)
            if captures:
                lab.save_captures(captures)
            tally = print_answers(plan, answers)
            if broken == "arp":
                print("  ARP for the VIP, as the client saw it:")
                for line in trace.arp_exchanges(frames, plan.vip, lab.namer):
                    print(line)
            result = summary_line(plan, tally, answers)
            print(f"  {result}")
            print()
            print_path(lab, answers, frames)
            status = 0 if result.startswith("both") else 1
            if keep:
                record = lab.record(kept=True)
                print(f"\nkept (recorded in {record}). Step in with:")
                for role in ("client", "director", "rs1", "rs2"):
                    print(f"  ip netns exec {lab.ns[role]} bash")
                print(f"  LVSUSER_CONTROL={lab.control} lvsuser ipvsadm -L -n")
                print(f"  LVSUSER_CONTROL={lab.control} lvsuser counters")
                print(f"  ip netns exec {lab.ns['client']} curl http://{plan.vip}:{plan.port}/")
                print("remove it with: lvsuser lab down")
    except LabError as exc:
        print(f"\nlvsuser lab: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nlvsuser lab: interrupted; everything the lab created has been removed",
              file=sys.stderr)
        return 130
    if not keep:
        print(f"\ncleaned up: all lab namespaces removed ({time.monotonic() - started:.1f} s)")
    return status


def lab_down(lab_id: str | None) -> int:
    records = lab_module.recorded_labs(include_running=bool(lab_id))
    if lab_id:
        records = [r for r in records if r["id"] == lab_id]
        if not records:
            print(f"lvsuser lab down: no kept lab with id {lab_id!r}", file=sys.stderr)
            return 1
    if not records:
        print("no kept labs")
        return 0
    for record in records:
        lab_module.take_down(record)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:  # called with the subcommand name still in front
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    # The lab narrates while it builds and sends: show each line as it happens, also in a pipe.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if args.mode == "down":
        return lab_down(args.id)
    if args.id:
        print("lvsuser lab: an id is only taken by `lvsuser lab down`", file=sys.stderr)
        return 2
    return run_lab(args.mode, args.keep, args.broken, args.requests, args.captures)


if __name__ == "__main__":
    sys.exit(main())
