"""ipvsadm's command line: option switch, command/option table checks, and what a command does.

``parse_options`` mirrors ipvsadm's option switch, including its order effects (``-r`` before
``-t`` sees no service port; ``-M`` reads an IPv4 mask unless the service is already IPv6);
``check_command`` its command/option table (``COMMANDS_V_OPTIONS``) and the checks after it.
The *first* option must be a command; otherwise ipvsadm only prints its "Try ..." line.
``wire_operation`` says which Backend call a table-changing command makes, with its arguments
as the control protocol carries them; ``table_operation`` the same call with model objects.
"""
from __future__ import annotations

from lvsuser.control.ipvsadm.args import CommandEntry
from lvsuser.control.ipvsadm.constants import (
    AF_INET,
    AF_INET6,
    CMDNAMES,
    CMD_ADD,
    CMD_ADDDEST,
    CMD_DEL,
    CMD_DELDEST,
    CMD_EDIT,
    CMD_EDITDEST,
    CMD_FLUSH,
    CMD_LIST,
    CMD_NONE,
    CMD_RESTORE,
    CMD_SAVE,
    CMD_STARTDAEMON,
    CMD_STOPDAEMON,
    CMD_TIMEOUT,
    CMD_ZERO,
    COMMANDS_V_OPTIONS,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_MASQ,
    CONN_F_TUNNEL,
    DEF_MCAST_IFN,
    DEF_SCHED,
    FMT_EXACT,
    FMT_NOSORT,
    FMT_NUMERIC,
    FMT_PERSISTENTCONN,
    FMT_RATE,
    FMT_STATS,
    FMT_THRESHOLDS,
    FMT_TUN_INFO,
    IFNAME_MAXLEN,
    INT_MAX,
    IPPROTO_IP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_TIMEOUT,
    OPTC_CONNECTION,
    OPTC_DAEMON,
    OPTC_EXACT,
    OPTC_FORWARD,
    OPTC_LTHRESHOLD,
    OPTC_MCAST,
    OPTC_MCAST_GROUP,
    OPTC_MCAST_PORT,
    OPTC_MCAST_TTL,
    OPTC_NETMASK,
    OPTC_NOSORT,
    OPTC_NUMERIC,
    OPTC_ONEPACKET,
    OPTC_PERSISTENCE_ENGINE,
    OPTC_PERSISTENT,
    OPTC_PERSISTENTCONN,
    OPTC_RATE,
    OPTC_SCHEDULER,
    OPTC_SCHED_FLAGS,
    OPTC_SERVER,
    OPTC_SERVICE,
    OPTC_STATS,
    OPTC_SYNCID,
    OPTC_SYNC_MAXLEN,
    OPTC_THRESHOLDS,
    OPTC_TIMEOUT,
    OPTC_TUN_CSUM,
    OPTC_TUN_INFO,
    OPTC_TUN_NOCSUM,
    OPTC_TUN_PORT,
    OPTC_TUN_REMCSUM,
    OPTC_TUN_TYPE,
    OPTC_UTHRESHOLD,
    OPTC_WEIGHT,
    OPTNAMES,
    PENAME_MAXLEN,
    POPT_MESSAGES,
    SCHEDNAME_MAXLEN,
    SERVICE_ADDR,
    STATE_BACKUP,
    STATE_MASTER,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    TAG_DAEMON,
    TAG_MCAST_GROUP,
    TAG_MCAST_INTERFACE,
    TAG_MCAST_PORT,
    TAG_MCAST_TTL,
    TAG_NO_SORT,
    TAG_PERSISTENCE_ENGINE,
    TAG_PERSISTENTCONN,
    TAG_RATE,
    TAG_SCTP_SERVICE,
    TAG_SET,
    TAG_SORT,
    TAG_START_DAEMON,
    TAG_STATS,
    TAG_STOP_DAEMON,
    TAG_SYNC_MAXLEN,
    TAG_THRESHOLDS,
    TAG_TIMEOUT,
    TAG_TUN_CSUM,
    TAG_TUN_INFO,
    TAG_TUN_NOCSUM,
    TAG_TUN_PORT,
    TAG_TUN_REMCSUM,
    TAG_TUN_TYPE,
    TUNNAMES,
    TUNNEL_TYPES_V_OPTIONS,
    TUNOPTS,
    TUN_FLAG_CSUM,
    TUN_FLAG_NOCSUM,
    TUN_FLAG_REMCSUM,
    opt,
)
from lvsuser.control.ipvsadm.errors import IpvsadmExit, fail, tryhelp_exit
from lvsuser.control.ipvsadm.popt import Popt
from lvsuser.control.ipvsadm.resolver import Resolver
from lvsuser.control.ipvsadm.values import (
    atoi,
    inet_pton6,
    parse_fwmark,
    parse_netmask,
    parse_sched_flags,
    parse_service,
    parse_timeout,
    string_to_number,
)


def _option_to_protocol(value: int) -> int:
    protocols = {ord("t"): IPPROTO_TCP, ord("u"): IPPROTO_UDP, TAG_SCTP_SERVICE: IPPROTO_SCTP}
    return protocols.get(value, IPPROTO_IP)


def _set_command(ce: CommandEntry, cmd: int) -> None:
    if ce.cmd != CMD_NONE:
        fail(2, "multiple commands specified")
    ce.cmd = cmd


def _set_option(ce: CommandEntry, optc: int) -> None:
    bit = opt(optc)
    if ce.options & bit:
        fail(2, f"multiple '{OPTNAMES[optc]}' options specified")
    ce.options |= bit


_FIRST_COMMANDS = {
    ord("A"): CMD_ADD, ord("E"): CMD_EDIT, ord("D"): CMD_DEL, ord("a"): CMD_ADDDEST,
    ord("e"): CMD_EDITDEST, ord("d"): CMD_DELDEST, ord("C"): CMD_FLUSH, ord("L"): CMD_LIST,
    ord("l"): CMD_LIST, ord("Z"): CMD_ZERO, TAG_SET: CMD_TIMEOUT, ord("R"): CMD_RESTORE,
    ord("S"): CMD_SAVE,
}


def parse_options(argv: list[str], resolver: Resolver) -> CommandEntry:
    """ipvsadm's parse_options + the defaults process_options sets first."""
    ce = CommandEntry()
    program = argv[0]
    popt = Popt(argv)
    sched_flags_arg = ""

    value, optarg = popt.next_opt()
    if value < 0:
        tryhelp_exit(program, -1)
    if value in _FIRST_COMMANDS:
        _set_command(ce, _FIRST_COMMANDS[value])
    elif value in (TAG_START_DAEMON, TAG_STOP_DAEMON):
        _set_command(ce, CMD_STARTDAEMON if value == TAG_START_DAEMON else CMD_STOPDAEMON)
        if optarg == "master":
            ce.daemon.state = STATE_MASTER
        elif optarg == "backup":
            ce.daemon.state = STATE_BACKUP
        elif value == TAG_START_DAEMON:
            fail(2, "illegal start-daemon parameter specified")
        else:
            fail(2, "illegal start_daemon specified")
    elif value == ord("h"):
        from lvsuser.control.ipvsadm.usage import usage_text

        raise IpvsadmExit(0, stdout=usage_text(program))
    elif value == ord("v"):
        from lvsuser.control.ipvsadm.usage import version_text

        raise IpvsadmExit(0, stdout=version_text())
    else:
        tryhelp_exit(program, -1)

    svc, dest = ce.svc, ce.dest
    while True:
        value, optarg = popt.next_opt()
        if value < 0:
            break
        if value in (ord("t"), ord("u"), TAG_SCTP_SERVICE):
            _set_option(ce, OPTC_SERVICE)
            svc.protocol = _option_to_protocol(value)
            parsed = parse_service(optarg, svc, resolver)
            if not parsed & SERVICE_ADDR:
                fail(2, "illegal virtual server address[:port] specified")
        elif value == ord("f"):
            _set_option(ce, OPTC_SERVICE)
            svc.af = AF_INET
            svc.protocol = IPPROTO_TCP
            svc.fwmark = parse_fwmark(optarg)
        elif value == ord("s"):
            _set_option(ce, OPTC_SCHEDULER)
            svc.sched_name = optarg[:SCHEDNAME_MAXLEN - 1]
        elif value == ord("p"):
            _set_option(ce, OPTC_PERSISTENT)
            svc.flags |= SVC_F_PERSISTENT
            svc.timeout = parse_timeout(optarg, 1, MAX_TIMEOUT)
        elif value == ord("M"):
            _set_option(ce, OPTC_NETMASK)
            if svc.af != AF_INET6:
                mask = parse_netmask(optarg, resolver)
                if mask is None:
                    fail(2, "illegal virtual server persistent mask specified")
                svc.netmask = mask
            else:
                svc.netmask = atoi(optarg)
                if svc.netmask < 1 or svc.netmask > 128:
                    fail(2, "illegal ipv6 netmask specified")
        elif value == ord("r"):
            _set_option(ce, OPTC_SERVER)
            scratch = svc.copy()
            parsed = parse_service(optarg, scratch, resolver)
            dest.af, dest.addr, dest.port = scratch.af, scratch.addr, scratch.port
            if not parsed & SERVICE_ADDR:
                fail(2, "illegal real server address[:port] specified")
            if parsed == SERVICE_ADDR:
                dest.port = svc.port  # no port given: the service's
        elif value in (ord("i"), ord("g"), ord("m")):
            _set_option(ce, OPTC_FORWARD)
            dest.conn_flags = {ord("i"): CONN_F_TUNNEL, ord("g"): CONN_F_DROUTE,
                               ord("m"): CONN_F_MASQ}[value]
        elif value == ord("w"):
            _set_option(ce, OPTC_WEIGHT)
            dest.weight = string_to_number(optarg, 0, INT_MAX)  # Debian's 1.31 allows INT_MAX
            if dest.weight == -1:
                fail(2, "illegal weight specified")
        elif value == ord("x"):
            _set_option(ce, OPTC_UTHRESHOLD)
            dest.u_threshold = string_to_number(optarg, 0, INT_MAX)
            if dest.u_threshold == -1:
                fail(2, "illegal u_threshold specified")
        elif value == ord("y"):
            _set_option(ce, OPTC_LTHRESHOLD)
            dest.l_threshold = string_to_number(optarg, 0, INT_MAX)
            if dest.l_threshold == -1:
                fail(2, "illegal l_threshold specified")
        elif value == ord("c"):
            _set_option(ce, OPTC_CONNECTION)
        elif value == ord("n"):
            _set_option(ce, OPTC_NUMERIC)
            ce.format |= FMT_NUMERIC
        elif value == TAG_MCAST_INTERFACE:
            _set_option(ce, OPTC_MCAST)
            ce.daemon.mcast_ifn = optarg[:IFNAME_MAXLEN - 1]
        elif value == ord("I"):
            _set_option(ce, OPTC_SYNCID)
            ce.daemon.syncid = string_to_number(optarg, 0, 255)
            if ce.daemon.syncid == -1:
                fail(2, "illegal syncid specified")
        elif value in _FORMAT_OPTIONS:
            optc, fmt = _FORMAT_OPTIONS[value]
            _set_option(ce, optc)
            ce.format |= fmt
        elif value == TAG_SORT:
            pass  # sorting is the default; accepted for compatibility
        elif value == ord("6"):
            if svc.fwmark:
                svc.af = AF_INET6
                svc.netmask = 128
            else:
                fail(2, "-6 used before -f\n")
        elif value == ord("o"):
            _set_option(ce, OPTC_ONEPACKET)
            svc.flags |= SVC_F_ONEPACKET
        elif value == TAG_PERSISTENCE_ENGINE:
            _set_option(ce, OPTC_PERSISTENCE_ENGINE)
            svc.pe_name = optarg[:PENAME_MAXLEN]
        elif value == ord("b"):
            _set_option(ce, OPTC_SCHED_FLAGS)
            sched_flags_arg = optarg[:127]
        elif value == TAG_MCAST_GROUP:
            _set_option(ce, OPTC_MCAST_GROUP)
            ce.daemon.mcast_group = _parse_mcast_group(optarg)
        elif value == TAG_MCAST_PORT:
            _set_option(ce, OPTC_MCAST_PORT)
            ce.daemon.mcast_port = string_to_number(optarg, 1, 65535)
            if ce.daemon.mcast_port == -1:
                fail(2, "illegal mcast-port specified")
        elif value == TAG_MCAST_TTL:
            _set_option(ce, OPTC_MCAST_TTL)
            ce.daemon.mcast_ttl = string_to_number(optarg, 1, 255)
            if ce.daemon.mcast_ttl == -1:
                fail(2, "illegal mcast-ttl specified")
        elif value == TAG_SYNC_MAXLEN:
            _set_option(ce, OPTC_SYNC_MAXLEN)
            ce.daemon.sync_maxlen = string_to_number(optarg, 1, 65535 - 20 - 8)
            if ce.daemon.sync_maxlen == -1:
                fail(2, "illegal sync-maxlen specified")
        elif value == TAG_TUN_TYPE:
            _set_option(ce, OPTC_TUN_TYPE)
            if optarg not in TUNNAMES:
                fail(2, "illegal tunnel type specified")
            dest.tun_type = TUNNAMES.index(optarg)
        elif value == TAG_TUN_PORT:
            _set_option(ce, OPTC_TUN_PORT)
            port = string_to_number(optarg, 1, 65535)
            if port == -1:
                fail(2, "illegal tunnel port specified")
            dest.tun_port = port
        elif value in (TAG_TUN_NOCSUM, TAG_TUN_CSUM, TAG_TUN_REMCSUM):
            optc = {TAG_TUN_NOCSUM: OPTC_TUN_NOCSUM, TAG_TUN_CSUM: OPTC_TUN_CSUM,
                    TAG_TUN_REMCSUM: OPTC_TUN_REMCSUM}[value]
            _set_option(ce, optc)
            dest.tun_flags |= {TAG_TUN_NOCSUM: TUN_FLAG_NOCSUM,
                               TAG_TUN_CSUM: TUN_FLAG_CSUM,
                               TAG_TUN_REMCSUM: TUN_FLAG_REMCSUM}[value]
        else:
            fail(2, f"invalid option `{popt.bad_option()}'")

    if value < -1:
        raise IpvsadmExit(-1, f"{popt.bad_option()}: {POPT_MESSAGES[value]}\n")

    if ce.cmd == CMD_TIMEOUT:
        first, second, third = popt.get_arg(), popt.get_arg(), popt.get_arg()
        if first is None or second is None or third is None:
            fail(2, "--set option requires 3 timeout values")
        ce.timeout = (parse_timeout(first, 0, MAX_TIMEOUT), parse_timeout(second, 0, MAX_TIMEOUT),
                      parse_timeout(third, 0, MAX_TIMEOUT))
    leftover = popt.get_arg()
    if leftover is not None:
        fail(2, f"unexpected argument {leftover}")
    if sched_flags_arg:
        svc.flags &= ~(SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3)
        svc.flags |= parse_sched_flags(svc.sched_name, sched_flags_arg)
    return ce


_FORMAT_OPTIONS = {
    TAG_TIMEOUT: (OPTC_TIMEOUT, 0), TAG_DAEMON: (OPTC_DAEMON, 0),
    TAG_STATS: (OPTC_STATS, FMT_STATS), TAG_RATE: (OPTC_RATE, FMT_RATE),
    TAG_THRESHOLDS: (OPTC_THRESHOLDS, FMT_THRESHOLDS),
    TAG_PERSISTENTCONN: (OPTC_PERSISTENTCONN, FMT_PERSISTENTCONN),
    TAG_NO_SORT: (OPTC_NOSORT, FMT_NOSORT), ord("X"): (OPTC_EXACT, FMT_EXACT),
    TAG_TUN_INFO: (OPTC_TUN_INFO, FMT_TUN_INFO),
}


def _parse_mcast_group(text: str) -> str:
    import ipaddress  # only --start-daemon needs it
    import socket

    if ":" in text:
        packed = inet_pton6(text)
        if packed is None or not ipaddress.IPv6Address(packed).is_multicast:
            fail(2, f"invalid IPv6 mcast-group `{text}'")
        return str(ipaddress.IPv6Address(packed))
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        packed = None
    if packed is None or not ipaddress.IPv4Address(packed).is_multicast:
        fail(2, f"invalid IPv4 mcast-group `{text}'")
    return str(ipaddress.IPv4Address(packed))


def _generic_opt_check(command: int, options: int) -> None:
    row = COMMANDS_V_OPTIONS[command - 1]
    last = 0
    count = 0
    for j, rule in enumerate(row):
        if not options & opt(j):
            if rule == "+":
                fail(2, f"You need to supply the '{OPTNAMES[j]}' option for the "
                        f"'{CMDNAMES[command - 1]}' command")
        else:
            if rule == "x":
                fail(2, f"Illegal '{OPTNAMES[j]}' option with the '{CMDNAMES[command - 1]}' command")
            if rule == "1":
                count += 1
                if count == 1:
                    last = j
                    continue
                fail(2, f"The option '{OPTNAMES[j]}' conflicts with the '{OPTNAMES[last]}' "
                        f"option in the '{CMDNAMES[command - 1]}' command")


def _tunnel_opt_check(tun_type: int, options: int) -> None:
    row = TUNNEL_TYPES_V_OPTIONS[tun_type]
    last = 0
    count = 0
    for j, optc in enumerate(TUNOPTS):
        rule = row[j]
        if not options & opt(optc):
            if rule == "+":
                fail(2, f"You need to supply the '{OPTNAMES[optc]}' option for the "
                        f"'{TUNNAMES[tun_type]}' tunnel type")
        else:
            if rule == "x":
                fail(2, f"Illegal '{OPTNAMES[optc]}' option with the '{TUNNAMES[tun_type]}' "
                        f"tunnel type")
            if rule == "1":
                count += 1
                if count == 1:
                    last = optc
                    continue
                fail(2, f"The option '{OPTNAMES[optc]}' conflicts with the '{OPTNAMES[last]}' "
                        f"option in the '{TUNNAMES[tun_type]}' tunnel type")


def check_command(ce: CommandEntry) -> None:
    """The checks process_options makes between parsing and doing."""
    _generic_opt_check(ce.cmd, ce.options)
    svc, dest = ce.svc, ce.dest
    if ce.cmd in (CMD_ADD, CMD_EDIT):
        if not svc.fwmark and not svc.port and not svc.flags & SVC_F_PERSISTENT:
            fail(2, "Zero port specified for non-persistent service")
        if svc.flags & SVC_F_ONEPACKET and not svc.fwmark and svc.protocol != IPPROTO_UDP:
            fail(2, "One-Packet Scheduling is only for UDP virtual services")
        if not svc.sched_name:
            svc.sched_name = DEF_SCHED
    if ce.cmd == CMD_STARTDAEMON and not ce.daemon.mcast_ifn:
        ce.daemon.mcast_ifn = DEF_MCAST_IFN
    fwd = dest.conn_flags & CONN_F_FWD_MASK
    if ce.cmd in (CMD_ADDDEST, CMD_EDITDEST):
        if not svc.fwmark and fwd in (CONN_F_TUNNEL, CONN_F_DROUTE):
            dest.port = svc.port
        if dest.af != svc.af and fwd != CONN_F_TUNNEL:
            fail(2, "Different address family is allowed only for tunneling servers")
        tunnel_options = (opt(OPTC_TUN_TYPE) | opt(OPTC_TUN_PORT) | opt(OPTC_TUN_NOCSUM)
                          | opt(OPTC_TUN_CSUM) | opt(OPTC_TUN_REMCSUM))
        if ce.options & tunnel_options and fwd != CONN_F_TUNNEL:
            fail(2, "Tunnel options conflict with forward method")
        _tunnel_opt_check(dest.tun_type, ce.options)


def parse_command(argv: list[str], resolver: Resolver | None = None) -> CommandEntry:
    """Parse and check one ipvsadm command line (argv[0] is the program name).

    Raises IpvsadmExit for what ipvsadm would end on before talking to IPVS (including -h, -v)."""
    ce = parse_options(argv, resolver or Resolver())
    check_command(ce)
    return ce


def wire_operation(ce: CommandEntry) -> tuple[str, dict] | None:
    """The Backend call a table-changing command makes, as (method, keyword arguments in the
    control protocol's form); None for other commands."""
    cmd = ce.cmd
    if cmd == CMD_FLUSH:
        return "flush", {}
    if cmd == CMD_ADD:
        return "add_service", {"svc": ce.svc.wire_service()}
    if cmd == CMD_EDIT:
        return "edit_service", {"svc": ce.svc.wire_service()}
    if cmd == CMD_DEL:
        return "del_service", {"key": ce.svc.wire_key()}
    if cmd == CMD_ZERO:
        return "zero", {"key": ce.svc.wire_key() if ce.options & opt(OPTC_SERVICE) else None}
    if cmd == CMD_ADDDEST:
        return "add_dest", {"key": ce.svc.wire_key(), "dest": ce.dest.wire_dest()}
    if cmd == CMD_EDITDEST:
        return "edit_dest", {"key": ce.svc.wire_key(), "dest": ce.dest.wire_dest()}
    if cmd == CMD_DELDEST:
        return "del_dest", {"key": ce.svc.wire_key(), "dest": ce.dest.wire_dest()}
    if cmd == CMD_TIMEOUT:
        return "set_timeouts", {"timeouts": ce.wire_timeouts()}
    return None


def table_operation(ce: CommandEntry) -> tuple[str, dict] | None:
    """``wire_operation`` with model objects: (Backend method name, keyword arguments)."""
    operation = wire_operation(ce)
    if operation is None:
        return None
    from lvsuser.control.protocol import decode

    op, wire_args = operation
    return op, {name: decode(value) for name, value in wire_args.items()}
