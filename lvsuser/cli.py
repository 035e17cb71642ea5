"""The `lvsuser` command: one entry point, a subcommand per job.

    lvsuser run [--control PATH] [--rules FILE] [--backend userspace|ipvs|table]
                [--io afpacket|tun] [--interface IF ...]     the director, in the foreground;
                [--state-dir DIR] [--clean]                  it keeps its table across restarts
                                                             (--clean starts empty)
    lvsuser ipvsadm ARGS...                                  ipvsadm 1.31, against the director
    lvsuser mark add|del N [-t|-u] DST[/PREFIX] [--dport P[-Q]] [--source SRC]
    lvsuser mark list                                        firewall-mark rules for -f services
    lvsuser counters [--all] [--json]                        the datapath's counters, explained
    lvsuser service install|remove [--root DIR] ...         the systemd unit
    lvsuser service ipvsadm-shim install|remove [--root DIR] /usr/sbin/ipvsadm -> lvsuser ipvsadm
    lvsuser --version                                        lvsuser X.Y.Z
    lvsuser keepalived check FILE                            validate a keepalived.conf
    lvsuser drain -t VIP:PORT -r RIP:PORT [--timeout S] [--remove]   drain a real server
    lvsuser realserver MODE ...                              set up a real server (nat/tun/dr)
    lvsuser lab ...                                          the seed lab in namespaces
    lvsuser bench ...                                        benchmarks

Subcommands owned by other parts of the project are imported only when used, so one that is
missing or broken gives a clear message instead of breaking the others.
"""
from __future__ import annotations

import importlib
import os
import sys


USAGE = """usage: lvsuser COMMAND [ARGS...]

commands:
  run          run the director (control socket, rules file, datapath)
  ipvsadm      the ipvsadm command line, talking to the director
  mark         manage firewall-mark rules for fwmark (-f) services
  counters     what the director's datapath did with each packet (forwarded, dropped: why)
  service      install/remove the systemd unit (lvsuser.service) and the ipvsadm drop-in
  keepalived   keepalived.conf tools (`keepalived check FILE`: validate, print the rules)
  drain        weight 0, wait for a real server's connections to end, remove it
  realserver   configure this host as a real server (nat, tun, dr)
  lab          the classic LVS lab in network namespaces
  bench        benchmarks
Run `lvsuser COMMAND -h` for a command's options; `lvsuser --version` says which lvsuser.
"""

# subcommand -> (module, function) resolved lazily
_DELEGATES = {
    "run": ("lvsuser.control.daemon", "main"),
    "ipvsadm": ("lvsuser.control.ipvsadm.entry", "main"),
    "mark": ("lvsuser.cli", "mark_main"),
    "counters": ("lvsuser.counters", "main"),
    "service": ("lvsuser.ops.service", "main"),
    "keepalived": ("lvsuser.keepalived.cli", "main"),
    "drain": ("lvsuser.drain", "main"),
    "realserver": ("lvsuser.hosts.cli", "main"),
    "lab": ("lvsuser.lab.cli", "main"),
    "bench": ("bench.__main__", "main"),
}


def _checkout_on_path() -> None:
    """The benchmarks live beside the package in the source checkout (bench/), not inside it:
    an editable install finds them there whatever the current directory."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, "bench", "__main__.py")) and checkout not in sys.path:
        sys.path.insert(0, checkout)


def _load(command: str):
    module_name, function = _DELEGATES[command]
    if command == "bench":
        _checkout_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"lvsuser: the `{command}` command is not available "
                         f"({module_name} cannot be imported: {exc})")
    entry = getattr(module, function, None)
    if entry is None:
        raise SystemExit(f"lvsuser: the `{command}` command is not available "
                         f"({module_name} has no {function}())")
    return entry


MARK_USAGE = """usage: lvsuser mark [--control PATH] add N [-t|-u|--sctp-service] DST[/PREFIX] [--dport P[-Q]] [--source SRC[/PREFIX]]
       lvsuser mark [--control PATH] del N ...same match...
       lvsuser mark [--control PATH] list
Packets that match get firewall mark N, for services added with `ipvsadm -A -f N`.
"""


def mark_main(argv: list[str] | None = None) -> int:
    """Manage MarkRules on the running director."""
    from lvsuser.control import rules
    from lvsuser.control.client import RemoteBackend
    from lvsuser.control.link import ControlUnreachable
    from lvsuser.model import IPVSError

    args = list(sys.argv[2:] if argv is None else argv)
    control = None
    if len(args) >= 2 and args[0] == "--control":
        control = args[1]
        args = args[2:]
    elif args and args[0].startswith("--control="):
        control = args[0].split("=", 1)[1]
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        stream = sys.stdout if args else sys.stderr
        stream.write(MARK_USAGE)
        return 0 if args else 2
    action, rest = args[0], args[1:]
    backend = RemoteBackend(control)
    try:
        if action == "list":
            if rest:
                sys.stderr.write(MARK_USAGE)
                return 2
            for rule in backend.get_mark_rules():
                print(rules.format_mark_rule(rule))
            return 0
        if action not in ("add", "del"):
            sys.stderr.write(MARK_USAGE)
            return 2
        try:
            rule = rules.parse_mark_rule(rest)
        except ValueError as exc:
            print(f"lvsuser mark: {exc}", file=sys.stderr)
            return 2
        if action == "add":
            backend.add_mark_rule(rule)
        else:
            backend.del_mark_rule(rule)
        return 0
    except ControlUnreachable as exc:
        print(f"lvsuser mark: {exc.strerror or exc}; is `lvsuser run` running?", file=sys.stderr)
        return 2
    except IPVSError as exc:
        print(f"lvsuser mark: {exc.message or exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        import lvsuser
        print(f"lvsuser {lvsuser.__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "ipvsadm" and argv is None:
        from lvsuser.control.ipvsadm.entry import restore_sigpipe
        restore_sigpipe()
    if command not in _DELEGATES:
        sys.stderr.write(f"lvsuser: unknown command {command!r}\n{USAGE}")
        return 2
    result = _load(command)(rest)
    return int(result or 0)
