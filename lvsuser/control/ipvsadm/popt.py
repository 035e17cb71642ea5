"""popt 1.19's option walker over ipvsadm's table.

``Popt`` walks argv as popt does: short options cluster (``-Ln``), a short option's argument may
be glued (``-t1.2.3.4:80``) or be the next word (whatever it starts with), ``--long=value``,
``-p``'s optional argument is taken only when the next word does not start with ``-``, words
that are not options are collected and handed out later by ``get_arg()``, ``--`` ends options.
tests/unit/test_ipvsadm_popt.py compares it with the C library step by step.
"""
from __future__ import annotations

from lvsuser.control.ipvsadm.constants import (
    NONE,
    OPTIONAL,
    OPTIONS_TABLE,
    POPT_ERROR_BADOPT,
    POPT_ERROR_NOARG,
    POPT_ERROR_UNWANTEDARG,
)


class Popt:
    """poptGetNextOpt over ipvsadm's table (no aliases, no config files, no ONEDASH options)."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.next = 1
        self.next_char_arg: str | None = None
        self.rest_leftover = False
        self.leftovers: list[str] = []
        self._long = {}
        for entry in OPTIONS_TABLE:
            self._long.setdefault(entry[0], entry)
        self._short = {entry[1]: entry for entry in OPTIONS_TABLE if entry[1]}

    def bad_option(self) -> str:
        return self.argv[self.next - 1]

    def get_arg(self) -> str | None:
        return self.leftovers.pop(0) if self.leftovers else None

    def next_opt(self) -> tuple[int, str | None]:
        argv = self.argv
        while True:
            long_arg: str | None = None
            entry = None
            if self.next_char_arg is None and self.next == len(argv):
                return -1, None
            if self.next_char_arg is None:
                orig = argv[self.next]
                self.next += 1
                if self.rest_leftover or not orig.startswith("-") or orig == "-":
                    self.leftovers.append(orig)
                    continue
                if orig == "--":
                    self.rest_leftover = True
                    continue
                body = orig[1:]
                one_dash = not body.startswith("-")
                if not one_dash:
                    body = body[1:]
                name, eq, value = body.partition("=")
                if eq:
                    long_arg = value
                if not one_dash:
                    entry = self._long.get(name)
                    if entry is None:
                        return POPT_ERROR_BADOPT, None
                else:
                    self.next_char_arg = orig[1:]
                    long_arg = None
            if self.next_char_arg is not None:
                chars = self.next_char_arg
                self.next_char_arg = None
                entry = self._short.get(chars[0])
                if entry is None:
                    return POPT_ERROR_BADOPT, None
                if len(chars) > 1:
                    self.next_char_arg = chars[1:]
            _, _, kind, value = entry
            if kind == NONE:
                if long_arg is not None or (self.next_char_arg or "").startswith("="):
                    return POPT_ERROR_UNWANTEDARG, None
                return value, None
            if long_arg is not None:
                arg: str | None = long_arg
            elif self.next_char_arg is not None:
                rest = self.next_char_arg
                arg = rest[1:] if rest.startswith("=") else rest
                self.next_char_arg = None
            elif self.next == len(argv):
                if kind != OPTIONAL:
                    return POPT_ERROR_NOARG, None
                arg = None
            elif kind == OPTIONAL and argv[self.next].startswith("-"):
                arg = None
            else:
                arg = argv[self.next]
                self.next += 1
            return value, arg
