"""`lvsuser keepalived check FILE`: validate a keepalived.conf and print the rules it makes.

The rules are those keepalived programs at start, in `ipvsadm -Sn` form (real servers without
alpha are in, alpha ones wait for their checks).  Messages go to stderr as FILE:LINE: level:
text; errors make the exit status 1.
"""
from __future__ import annotations

import argparse
import io
import sys
from typing import Optional

from lvsuser.control.ipvsadm.constants import FMT_NUMERIC, FMT_RULE
from lvsuser.control.ipvsadm.output import Printer, format_service_entry
from lvsuser.control.ipvsadm.qsort import compare_services, glibc_qsort
from lvsuser.control.ipvsadm.resolver import NumericResolver
from lvsuser.check.ipwrapper import PoolError
from lvsuser.keepalived.config import load


def format_rules(services) -> str:
    out = io.StringIO()
    printer = Printer(out, NumericResolver())
    for service in glibc_qsort(list(services), compare_services):  # ipvsadm -S sorts
        out.write(format_service_entry(printer, service, FMT_RULE | FMT_NUMERIC))
    return out.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser keepalived",
        description="keepalived.conf tools (the director runs one with "
                    "`lvsuser run --keepalived-conf FILE`).")
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE and print the rules it makes "
                                         "(ipvsadm -Sn form)")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true",
                       help="print only errors, not the rules, warnings and notes")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configuration = load(args.file)
    for message in configuration.messages:
        if not args.quiet or message.level == "error":
            print(message, file=sys.stderr)
    if configuration.errors:
        print(f"lvsuser keepalived: {args.file}: {len(configuration.errors)} error(s)",
              file=sys.stderr)
        return 1
    try:
        services = configuration.services()
    except PoolError as exc:  # a service the table refuses (the kernel would too)
        print(f"{exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        sys.stdout.write(format_rules(services))
    return 0
