"""`lvsuser realserver {nat,tun,dr} [--vip VIP...] [--director IP] [--undo] [--check]`.

One command per guide step 3: it configures the host it runs on (run it inside the real
server's network namespace), records what it changed so --undo can put everything back, and
--check explains in plain words what is wrong, with the fix.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

from lvsuser.hosts import realserver

EPILOG = """\
examples (the guide's step 3):
  lvsuser realserver nat --director 192.168.137.44     default route via the director
  lvsuser realserver dr  --vip 192.168.137.66          VIP on lo:0, arp_ignore=1 arp_announce=2
  lvsuser realserver tun --vip 192.168.137.65          VIP on tunl0 (or lvtun0), ARP + rp_filter
  lvsuser realserver dr  --undo                        restore exactly what was there before
  lvsuser realserver dr  --vip 192.168.137.66 --check  say what is wrong; exit 1 if anything
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser realserver",
        description="Configure this host as an LVS real server (NAT, TUN or DR).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("nat", "tun", "dr"), help="forwarding method")
    parser.add_argument("--vip", nargs="+", default=[], metavar="VIP",
                        help="virtual IP address(es) (tun, dr)")
    parser.add_argument("--director", metavar="IP", help="the director's address on the "
                        "real servers' network (nat: becomes the default gateway)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--undo", action="store_true", help="restore what was there before")
    action.add_argument("--check", action="store_true",
                        help="report what is wrong (exit status 1 if anything is)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["realserver"]:  # called with the subcommand name still in front
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        if args.undo:
            state = realserver.load_state()
            if state is not None and state.get("mode") != args.mode:
                print(f"lvsuser realserver: this host is configured for {state.get('mode')}, "
                      f"not {args.mode}; run 'lvsuser realserver {state.get('mode')} --undo'",
                      file=sys.stderr)
                return 2
            with realserver.exclusive():
                realserver.undo()
            return 0
        vips, director = args.vip, args.director
        if args.check:
            state = realserver.load_state() or {}
            if state.get("mode") == args.mode:  # fill in what the apply step was told
                vips = vips or state.get("vips") or []
                director = director or state.get("director")
            problems = realserver.check(args.mode, vips, director)
            if not problems:
                vips, director = realserver.validate(args.mode, vips, director)
                print(f"realserver {args.mode}: OK: {realserver.summary(args.mode, vips, director)}")
                return 0
            count = len(problems)
            print(f"realserver {args.mode}: {count} problem{'s' if count > 1 else ''}")
            previous_fix = None
            for problem in problems:
                print(textwrap.fill(problem.what, width=100, initial_indent="  - ",
                                    subsequent_indent="    "))
                if problem.fix != previous_fix:  # one fix often cures several problems
                    print(f"    fix: {problem.fix}")
                previous_fix = problem.fix
            return 1
        with realserver.exclusive():
            realserver.apply(args.mode, vips, director)
        return 0
    except realserver.RealServerError as exc:
        print(f"lvsuser realserver: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"lvsuser realserver: permission denied ({exc.filename or exc}); run as root",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
