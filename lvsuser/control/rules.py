"""Rules files: the ``ipvsadm -S`` format, read by ``ipvsadm -R`` and ``lvsuser run --rules``.

A rules file is what ``ipvsadm -S`` writes: one ipvsadm command per line (``-A``, ``-a``, ...),
without the program name.  Lines are split on blanks exactly as ipvsadm's config_stream does
(a word ``ipvsadm`` is dropped, so ``ipvsadm -A ...`` lines work too); blank lines are skipped.

lvsuser's additions, both absent from anything ``ipvsadm -S`` writes for a normal table:

* a line whose first word starts with ``#`` is a comment (ipvsadm would refuse it);
* firewall-mark rules, for ``-f`` services (a user-space director cannot see marks that
  iptables/nftables set, so the rules file says which packets carry which mark)::

      --mark N [-t|-u|--sctp-service] DST[/PREFIX] [--dport PORT[-PORT]] [--source SRC[/PREFIX]]

  e.g. ``--mark 1 -t 198.18.0.10 --dport 80-81``; without ``-t``/``-u`` any protocol matches.
  ``ipvsadm -S`` writes these lines after the services when there are mark rules.

All or nothing -- stricter than ipvsadm on purpose: ipvsadm -R applies line after line, stops
at the first line it cannot parse and goes past lines the kernel refuses, leaving a half-restored
table.  Here every line is parsed first; then the whole batch is applied in one transaction.  A
bad line is reported with its line number and the running table is left exactly as it was.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Optional

from lvsuser import model
from lvsuser.control.ipvsadm.command import parse_command, table_operation
from lvsuser.control.ipvsadm.constants import CMD_RESTORE, PROGRAM
from lvsuser.control.ipvsadm.errors import IpvsadmExit, strerror_for_operation
from lvsuser.control.ipvsadm.resolver import Resolver


class RulesError(Exception):
    """A rules file line that cannot be applied; nothing of the file was applied."""

    def __init__(self, line: int, message: str, code: int = 2):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
        self.code = code


@dataclass
class RuleOperation:
    line: int
    op: str  # a Backend method name
    kwargs: dict


_BLANKS = re.compile(r"[ \t\n\r]+")


def split_line(line: str) -> list[str]:
    """config_stream_read's words of one line, without the word 'ipvsadm'."""
    return [word for word in _BLANKS.split(line) if word and word != "ipvsadm"]


# --- mark rules ---------------------------------------------------------------------------------
_MARK_PROTOCOLS = {"-t": model.IPPROTO_TCP, "--tcp-service": model.IPPROTO_TCP,
                   "-u": model.IPPROTO_UDP, "--udp-service": model.IPPROTO_UDP,
                   "--sctp-service": model.IPPROTO_SCTP}
_MARK_PROTOCOL_OPTION = {model.IPPROTO_TCP: "-t", model.IPPROTO_UDP: "-u",
                         model.IPPROTO_SCTP: "--sctp-service"}


def parse_mark_rule(words: list[str]) -> model.MarkRule:
    """``N [-t|-u|--sctp-service] DST[/PREFIX] [--dport P[-Q]] [--source SRC[/PREFIX]]``."""
    if not words:
        raise ValueError("missing mark number")
    try:
        mark = int(words[0], 10)
    except ValueError:
        raise ValueError(f"invalid mark `{words[0]}'") from None
    if not 0 < mark <= 0xFFFFFFFF:
        raise ValueError(f"invalid mark `{words[0]}'")
    protocol = 0
    dst = None
    dport_lo, dport_hi = 0, 65535
    src = None
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word in _MARK_PROTOCOLS:
            if protocol:
                raise ValueError("more than one protocol given")
            protocol = _MARK_PROTOCOLS[word]
            if rest and not rest[0].startswith("-"):
                dst = _network(rest.pop(0))
        elif word in ("--dport", "--source"):
            if not rest:
                raise ValueError(f"{word} needs a value")
            value = rest.pop(0)
            if word == "--dport":
                dport_lo, dport_hi = _port_range(value)
            else:
                src = _network(value)
        elif not word.startswith("-") and dst is None:
            dst = _network(word)
        else:
            raise ValueError(f"unexpected `{word}'")
    if dst is None:
        raise ValueError("missing destination address")
    if src is not None and src.version != dst.version:
        raise ValueError("source and destination are of different address families")
    return model.MarkRule(mark=mark, dst_net=dst, protocol=protocol, dport_lo=dport_lo,
                          dport_hi=dport_hi, src_net=src)


def _network(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid address `{text}'") from None


def _port_range(text: str) -> tuple[int, int]:
    low_text, _, high_text = text.partition("-")
    try:
        low = int(low_text, 10)
        high = int(high_text, 10) if high_text else low
    except ValueError:
        raise ValueError(f"invalid port range `{text}'") from None
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"invalid port range `{text}'")
    return low, high


def format_mark_rule(rule: model.MarkRule) -> str:
    words = ["--mark", str(rule.mark)]
    if rule.protocol:
        words.append(_MARK_PROTOCOL_OPTION.get(rule.protocol, "-t"))
    words.append(str(rule.dst_net))
    if (rule.dport_lo, rule.dport_hi) != (0, 65535):
        words += ["--dport", str(rule.dport_lo) if rule.dport_lo == rule.dport_hi
                  else f"{rule.dport_lo}-{rule.dport_hi}"]
    if rule.src_net is not None:
        words += ["--source", str(rule.src_net)]
    return " ".join(words)


# --- whole files -------------------------------------------------------------------------------
def parse_rules(text: str, resolver: Optional[Resolver] = None,
                program: str = PROGRAM) -> list[RuleOperation]:
    """Every line into an operation, or RulesError for the first bad one (nothing applied)."""
    operations: list[RuleOperation] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = split_line(line)
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "--mark":
            try:
                rule = parse_mark_rule(words[1:])
            except ValueError as exc:
                raise RulesError(number, f"bad mark rule: {exc}") from None
            operations.append(RuleOperation(number, "add_mark_rule", {"rule": rule}))
            continue
        try:
            ce = parse_command([program] + words, resolver)
        except IpvsadmExit as exc:
            message = exc.stderr.rstrip("\n") or "only table-changing commands are allowed here"
            raise RulesError(number, message, exc.code or 2) from None
        if ce.cmd == CMD_RESTORE:  # ipvsadm refuses -R inside -R with its Try line
            raise RulesError(number, f"Try `{program} -h' or '{program} --help' for more "
                                     "information.", -1)
        operation = table_operation(ce)
        if operation is None:
            raise RulesError(number, "only table-changing commands are allowed here", 2)
        operations.append(RuleOperation(number, operation[0], operation[1]))
    return operations


def load_rules_file(path: str, resolver=None) -> list[RuleOperation]:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_rules(handle.read(), resolver)


def apply_operations(backend, operations: list[RuleOperation]) -> None:
    """Apply all operations or none; RulesError names the refused line."""
    from lvsuser.backends.base import BatchFailed

    batch = [(o.op, o.kwargs) for o in operations]
    try:
        backend.apply_batch(batch)
    except BatchFailed as exc:
        failed = operations[exc.index] if 0 <= exc.index < len(operations) else None
        line = failed.line if failed else 0
        op = failed.op if failed else ""
        raise RulesError(line, strerror_for_operation(op, exc.errno), -1) from None
    except model.IPVSError as exc:  # the batch as a whole was refused (e.g. too large)
        reason = exc.message or os.strerror(exc.errno)
        raise RulesError(0, f"the director refused the rules: {reason}", -1) from None

