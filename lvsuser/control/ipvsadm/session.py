"""Running one parsed ipvsadm command against a backend: listings, rule changes, -R.

A ``Session`` is one ipvsadm invocation: its streams, its resolver and the backend, reached at
first need (so ``-h`` and parse errors work without a director).  Given no backend, it talks to
the director through the control socket; a rule change then goes out as one request in the
protocol's wire form straight from the parsed arguments (``command.wire_operation``), and the
model is never imported.  Listings need the model objects and use ``RemoteBackend`` over the
same connection.
"""
from __future__ import annotations

import errno
from io import TextIOBase as TextIO

from lvsuser.control.ipvsadm.args import CommandEntry, ServiceArgs
from lvsuser.control.ipvsadm.command import parse_command, wire_operation
from lvsuser.control.ipvsadm.constants import (
    CMD_LIST,
    CMD_RESTORE,
    CMD_SAVE,
    CMD_STARTDAEMON,
    CMD_STOPDAEMON,
    FMT_NOSORT,
    FMT_RULE,
    OPTC_CONNECTION,
    OPTC_DAEMON,
    OPTC_PERSISTENTCONN,
    OPTC_RATE,
    OPTC_SERVICE,
    OPTC_STATS,
    OPTC_THRESHOLDS,
    OPTC_TIMEOUT,
    STATE_MASTER,
    opt,
)
from lvsuser.control.ipvsadm.errors import (
    IpvsadmExit,
    fail,
    ipvs_strerror,
    strerror_for_operation,
    tryhelp_exit,
    unreachable,
)
from lvsuser.control.ipvsadm.resolver import Resolver
from lvsuser.control.link import ControlLink, ControlUnreachable


class Session:
    """One ipvsadm invocation: streams, resolver and the backend, reached at first need."""

    def __init__(self, backend, control: str | None, out: TextIO, err: TextIO,
                 stdin: TextIO | None, resolver: Resolver):
        self._backend = backend  # an in-process Backend, or None: the director's control socket
        self._control = control
        self._link: ControlLink | None = None
        self.out = out
        self.err = err
        self.stdin = stdin
        self.resolver = resolver
        self._printer = None

    @property
    def printer(self):
        if self._printer is None:
            from lvsuser.control.ipvsadm.output import Printer

            self._printer = Printer(self.out, self.resolver)
        return self._printer

    @property
    def link(self) -> ControlLink:
        if self._link is None:
            link = ControlLink(self._control)
            try:
                link.connect()
            except ControlUnreachable as exc:
                unreachable(exc)
            self._link = link
        return self._link

    @property
    def backend(self):
        if self._backend is None:
            from lvsuser.control.client import RemoteBackend

            self._backend = RemoteBackend(link=self.link)
        return self._backend

    def change(self, op: str, wire_args: dict) -> int:
        """Apply one table change; 0, or the errno it was refused with."""
        if self._link is None and self._backend is not None:  # in process: model objects
            from lvsuser.control.protocol import decode
            from lvsuser.model import IPVSError

            try:
                getattr(self._backend, op)(**{k: decode(v) for k, v in wire_args.items()})
            except IPVSError as exc:
                return exc.errno
            return 0
        try:
            reply = self.link.call_raw(op, wire_args)
        except ControlUnreachable as exc:
            unreachable(exc)
        if reply.get("ok"):
            return 0
        return int(reply.get("errno") or errno.EIO)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()


def _call(session: Session, op: str, *args):
    try:
        return getattr(session.backend, op)(*args)
    except ControlUnreachable as exc:
        unreachable(exc)


def list_all(session: Session, fmt: int) -> None:
    from lvsuser.control.ipvsadm.output import format_service_entry, title
    from lvsuser.control.ipvsadm.qsort import compare_services, glibc_qsort
    from lvsuser.model import IPVSError

    out = session.out
    if not fmt & FMT_RULE:
        info = _call(session, "get_info")
        major, minor, patch = info["version"]
        out.write(f"IP Virtual Server version {major}.{minor}.{patch} (size={info['conn_tab_size']})\n")
    try:
        services = _call(session, "get_services")
    except IPVSError as exc:
        raise IpvsadmExit(1, ipvs_strerror("get_services", exc.errno) + "\n")
    if not fmt & FMT_NOSORT:
        services = glibc_qsort(services, compare_services)
    out.write(title(fmt))
    for svc in services:
        out.write(format_service_entry(session.printer, svc, fmt))
    if fmt & FMT_RULE:
        rules = _call(session, "get_mark_rules")
        if rules:
            from lvsuser.control.rules import format_mark_rule
            for rule in rules:
                out.write(format_mark_rule(rule) + "\n")


def list_service(session: Session, svc_args: ServiceArgs, fmt: int) -> None:
    from lvsuser.control.ipvsadm.output import format_service_entry, title
    from lvsuser.model import IPVSError

    try:
        svc = _call(session, "get_service", svc_args.key())
    except IPVSError as exc:
        raise IpvsadmExit(1, ipvs_strerror("get_service", exc.errno) + "\n")
    if svc is None:
        raise IpvsadmExit(1, ipvs_strerror("get_service", errno.ESRCH) + "\n")
    session.out.write(title(fmt))
    session.out.write(format_service_entry(session.printer, svc, fmt))


def list_conn(session: Session, fmt: int) -> None:
    from lvsuser.control.ipvsadm.output import connection_title, format_connection
    from lvsuser.model import IPVSError

    out = session.out
    try:  # page by page: what came is printed before the next page is asked for
        rows = session.backend.iter_connections()
        first = next(rows, None)
    except ControlUnreachable as exc:
        unreachable(exc)
    except (IPVSError, NotImplementedError):
        raise IpvsadmExit(1, "cannot open file /proc/net/ip_vs_conn\n")
    out.write(connection_title(fmt))
    if first is None:
        return
    printer = session.printer
    out.write(format_connection(printer, first, fmt))
    try:
        for row in rows:
            out.write(format_connection(printer, row, fmt))
    except ControlUnreachable as exc:
        unreachable(exc)
    except IPVSError as exc:
        raise IpvsadmExit(1, f"reading the connections failed: {exc.message or exc}\n")


def list_timeout(session: Session) -> None:
    t = _call(session, "get_timeouts")
    session.out.write(f"Timeout (tcp tcpfin udp): {t.tcp} {t.tcp_fin} {t.udp}\n")


def list_daemon(session: Session) -> None:
    for daemon in _call(session, "get_daemons"):
        # ipvsadm prints the optional settings only when the kernel reports them.
        line = f"{daemon.state} sync daemon (mcast={daemon.mcast_ifn}, syncid={daemon.syncid}"
        if daemon.sync_maxlen:
            line += f", maxlen={daemon.sync_maxlen}"
        if daemon.mcast_group is not None:
            line += f", group={daemon.mcast_group}"
        if daemon.mcast_port:
            line += f", port={daemon.mcast_port}"
        if daemon.mcast_ttl:
            line += f", ttl={daemon.mcast_ttl}"
        session.out.write(line + ")\n")


def _sync_daemon(session: Session, ce: CommandEntry) -> int:
    import ipaddress

    from lvsuser import model

    op = "start_daemon" if ce.cmd == CMD_STARTDAEMON else "stop_daemon"
    state = "master" if ce.daemon.state == STATE_MASTER else "backup"
    d = ce.daemon
    arg = (model.SyncDaemon(state=state, mcast_ifn=d.mcast_ifn, syncid=d.syncid,
                            sync_maxlen=d.sync_maxlen, mcast_port=d.mcast_port,
                            mcast_ttl=d.mcast_ttl,
                            mcast_group=ipaddress.ip_address(d.mcast_group)
                            if d.mcast_group else None)
           if op == "start_daemon" else state)
    try:
        _call(session, op, arg)
    except NotImplementedError:
        session.err.write(strerror_for_operation(op, errno.ENOSYS) + "\n")
        return -1
    except model.IPVSError as exc:
        session.err.write(strerror_for_operation(op, exc.errno) + "\n")
        return -1
    return 0


def restore(session: Session, program: str) -> int:
    """``ipvsadm -R``: read the rules from stdin and apply them all or none."""
    from lvsuser.control import rules

    text = session.stdin.read() if session.stdin is not None else ""
    try:
        operations = rules.parse_rules(text, session.resolver, program)
        rules.apply_operations(session.backend, operations)
    except ControlUnreachable as exc:
        unreachable(exc)
    except rules.RulesError as exc:
        session.err.write(f"{exc.message}\n")
        where = f"line {exc.line} of the rules was refused" if exc.line else "the rules were refused"
        session.err.write(f"{program}: {where}; no rule was applied\n")
        if exc.code == -1:
            return -1
        raise IpvsadmExit(exc.code)
    return 0


def run_command(ce: CommandEntry, session: Session, argv: list[str], reading_stdin: bool) -> int:
    """The switch at the end of ipvsadm's process_options; returns its result (0 or -1)."""
    options, fmt = ce.options, ce.format
    if ce.cmd == CMD_LIST:
        if ((options & (opt(OPTC_CONNECTION) | opt(OPTC_TIMEOUT) | opt(OPTC_DAEMON))
             and options & (opt(OPTC_STATS) | opt(OPTC_RATE) | opt(OPTC_THRESHOLDS)))
                or (options & (opt(OPTC_TIMEOUT) | opt(OPTC_DAEMON))
                    and options & opt(OPTC_PERSISTENTCONN))):
            fail(2, "options conflicts in the list command")
        if options & opt(OPTC_CONNECTION):
            list_conn(session, fmt)
        elif options & opt(OPTC_SERVICE):
            list_service(session, ce.svc, fmt)
        elif options & opt(OPTC_TIMEOUT):
            list_timeout(session)
        elif options & opt(OPTC_DAEMON):
            list_daemon(session)
        else:
            list_all(session, fmt)
        return 0
    if ce.cmd == CMD_RESTORE:
        if reading_stdin:
            tryhelp_exit(argv[0], -1)
        return restore(session, argv[0])
    if ce.cmd == CMD_SAVE:
        list_all(session, fmt | FMT_RULE)
        return 0
    if ce.cmd in (CMD_STARTDAEMON, CMD_STOPDAEMON):
        return _sync_daemon(session, ce)
    operation = wire_operation(ce)
    if operation is None:
        return 0
    op, wire_args = operation
    refused = session.change(op, wire_args)
    if refused:
        session.err.write(strerror_for_operation(op, refused) + "\n")
        return -1
    return 0


def process_options(argv: list[str], session: Session, reading_stdin: bool = False) -> int:
    ce = parse_command(argv, session.resolver)
    return run_command(ce, session, argv, reading_stdin)
