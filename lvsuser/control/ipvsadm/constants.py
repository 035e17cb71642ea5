"""ipvsadm 1.31's numbers and tables: commands, options, popt's table, output format flags.

Only plain ints, strings and lists live here, so every other module of the package (and the
rules-file reader) can use them without importing anything.  Kernel values that ``model.py``
also defines are repeated here rather than imported, because importing the model costs the
command line more than the whole of its own work; tests/unit/test_ipvsadm_startup.py checks they agree.
"""

PROGRAM = "ipvsadm"
IPVSADM_VERSION = "v1.31 2019/12/24"
MAX_TIMEOUT = 86400 * 31
IPVS_SVC_PERSISTENT_TIMEOUT = 6 * 60  # libipvs.h: what a bare -p gives (not the kernel's 300)
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
DEF_SCHED = "wlc"
DEF_TUNNEL_TYPE = "ipip"
DEF_MCAST_IFN = "eth0"
SCHEDULERS = "rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh"
PE_LIST = "sip"
SCHEDNAME_MAXLEN = 16
IFNAME_MAXLEN = 16
PENAME_MAXLEN = 32
IPPROTO_IP = 0

# --- commands and options (ipvsadm.c's CMD_*, OPTC_* and their names) -----------------------
(CMD_NONE, CMD_ADD, CMD_EDIT, CMD_DEL, CMD_FLUSH, CMD_LIST, CMD_ADDDEST, CMD_DELDEST,
 CMD_EDITDEST, CMD_TIMEOUT, CMD_STARTDAEMON, CMD_STOPDAEMON, CMD_RESTORE, CMD_SAVE,
 CMD_ZERO) = range(15)

CMDNAMES = ["add-service", "edit-service", "delete-service", "flush", "list", "add-server",
            "delete-server", "edit-server", "set", "start-daemon", "stop-daemon", "restore",
            "save", "zero"]

OPTNAMES = ["numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
            "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
            "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
            "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
            "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
            "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"]
(OPTC_NUMERIC, OPTC_CONNECTION, OPTC_SERVICE, OPTC_SCHEDULER, OPTC_PERSISTENT, OPTC_NETMASK,
 OPTC_SERVER, OPTC_FORWARD, OPTC_WEIGHT, OPTC_UTHRESHOLD, OPTC_LTHRESHOLD, OPTC_MCAST,
 OPTC_TIMEOUT, OPTC_DAEMON, OPTC_STATS, OPTC_RATE, OPTC_THRESHOLDS, OPTC_PERSISTENTCONN,
 OPTC_NOSORT, OPTC_SYNCID, OPTC_EXACT, OPTC_ONEPACKET, OPTC_PERSISTENCE_ENGINE,
 OPTC_SCHED_FLAGS, OPTC_MCAST_GROUP, OPTC_MCAST_PORT, OPTC_MCAST_TTL, OPTC_SYNC_MAXLEN,
 OPTC_TUN_INFO, OPTC_TUN_TYPE, OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM,
 OPTC_TUN_REMCSUM) = range(34)


def opt(optc: int) -> int:
    """The bit of OPTC_* ``optc`` in a command's option set."""
    return 1 << optc


# Which options each command takes: '+' required, 'x' illegal, '1' at most one of them, ' ' free.
# Columns follow OPTNAMES; rows follow CMDNAMES (ipvsadm.c's commands_v_options).
COMMANDS_V_OPTIONS = [
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # ADD
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # EDIT
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # DEL
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # FLUSH
    " 11xxxxxxxxx11       xxxxxxx xxxxx",  # LIST
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # ADDSRV
    "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxx",  # DELSRV
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # EDITSRV
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # TIMEOUT
    "xxxxxxxxxxx xxxxxxx xxxx    xxxxxx",  # STARTD
    "xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxx",  # STOPD
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # RESTORE
    " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # SAVE
    "xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # ZERO
]

TUNNAMES = ["ipip", "gue", "gre"]
TUNFLAGS = ["-c", "+c", "r+c"]
TUN_FLAGS_OPTS = ["--tun-nocsum", "--tun-csum", "--tun-remcsum"]
TUNOPTS = [OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM]
TUNNEL_TYPES_V_OPTIONS = ["xxxx", "+111", "x11x"]  # ipip, gue, gre

# Printing format flags.
FMT_NUMERIC = 0x0001
FMT_RULE = 0x0002
FMT_STATS = 0x0004
FMT_RATE = 0x0008
FMT_THRESHOLDS = 0x0010
FMT_PERSISTENTCONN = 0x0020
FMT_NOSORT = 0x0040
FMT_EXACT = 0x0080
FMT_TUN_INFO = 0x0100

SERVICE_NONE, SERVICE_ADDR, SERVICE_PORT = 0, 1, 2

# Conn flags (IP_VS_CONN_F_*).
CONN_F_MASQ, CONN_F_LOCALNODE, CONN_F_TUNNEL, CONN_F_DROUTE = 0, 1, 2, 3
CONN_F_FWD_MASK = 7

STATE_MASTER, STATE_BACKUP = 1, 2

# Tags for long-only options (values outside ASCII, as in ipvsadm).
(TAG_SET, TAG_START_DAEMON, TAG_STOP_DAEMON, TAG_MCAST_INTERFACE, TAG_TIMEOUT, TAG_DAEMON,
 TAG_STATS, TAG_RATE, TAG_THRESHOLDS, TAG_PERSISTENTCONN, TAG_SORT, TAG_NO_SORT,
 TAG_PERSISTENCE_ENGINE, TAG_SCTP_SERVICE, TAG_MCAST_GROUP, TAG_MCAST_PORT, TAG_MCAST_TTL,
 TAG_SYNC_MAXLEN, TAG_TUN_INFO, TAG_TUN_TYPE, TAG_TUN_PORT, TAG_TUN_NOCSUM, TAG_TUN_CSUM,
 TAG_TUN_REMCSUM) = range(128, 152)

NONE, STRING, OPTIONAL = "none", "string", "optional"

# (long name, short name, argument, value returned) -- ipvsadm's popt table, in its order.
OPTIONS_TABLE = [
    ("add-service", "A", NONE, ord("A")), ("edit-service", "E", NONE, ord("E")),
    ("delete-service", "D", NONE, ord("D")), ("clear", "C", NONE, ord("C")),
    ("list", "L", NONE, ord("L")), ("list", "l", NONE, ord("l")),
    ("zero", "Z", NONE, ord("Z")), ("add-server", "a", NONE, ord("a")),
    ("edit-server", "e", NONE, ord("e")), ("delete-server", "d", NONE, ord("d")),
    ("set", "", NONE, TAG_SET), ("help", "h", NONE, ord("h")),
    ("version", "v", NONE, ord("v")), ("restore", "R", NONE, ord("R")),
    ("save", "S", NONE, ord("S")), ("start-daemon", "", STRING, TAG_START_DAEMON),
    ("stop-daemon", "", STRING, TAG_STOP_DAEMON), ("tcp-service", "t", STRING, ord("t")),
    ("udp-service", "u", STRING, ord("u")), ("sctp-service", "", STRING, TAG_SCTP_SERVICE),
    ("fwmark-service", "f", STRING, ord("f")), ("scheduler", "s", STRING, ord("s")),
    ("persistent", "p", OPTIONAL, ord("p")), ("netmask", "M", STRING, ord("M")),
    ("real-server", "r", STRING, ord("r")), ("masquerading", "m", NONE, ord("m")),
    ("ipip", "i", NONE, ord("i")), ("gatewaying", "g", NONE, ord("g")),
    ("weight", "w", STRING, ord("w")), ("u-threshold", "x", STRING, ord("x")),
    ("l-threshold", "y", STRING, ord("y")), ("numeric", "n", NONE, ord("n")),
    ("connection", "c", NONE, ord("c")), ("mcast-interface", "", STRING, TAG_MCAST_INTERFACE),
    ("syncid", "", STRING, ord("I")), ("timeout", "", NONE, TAG_TIMEOUT),
    ("daemon", "", NONE, TAG_DAEMON), ("stats", "", NONE, TAG_STATS),
    ("rate", "", NONE, TAG_RATE), ("thresholds", "", NONE, TAG_THRESHOLDS),
    ("persistent-conn", "", NONE, TAG_PERSISTENTCONN), ("nosort", "", NONE, TAG_NO_SORT),
    ("sort", "", NONE, TAG_SORT), ("exact", "X", NONE, ord("X")),
    ("ipv6", "6", NONE, ord("6")), ("ops", "o", NONE, ord("o")),
    ("pe", "", STRING, TAG_PERSISTENCE_ENGINE), ("sched-flags", "b", STRING, ord("b")),
    ("mcast-group", "", STRING, TAG_MCAST_GROUP), ("mcast-port", "", STRING, TAG_MCAST_PORT),
    ("mcast-ttl", "", STRING, TAG_MCAST_TTL), ("sync-maxlen", "", STRING, TAG_SYNC_MAXLEN),
    ("tun-info", "", NONE, TAG_TUN_INFO), ("tun-type", "", STRING, TAG_TUN_TYPE),
    ("tun-port", "", STRING, TAG_TUN_PORT), ("tun-nocsum", "", NONE, TAG_TUN_NOCSUM),
    ("tun-csum", "", NONE, TAG_TUN_CSUM), ("tun-remcsum", "", NONE, TAG_TUN_REMCSUM),
]

POPT_ERROR_NOARG = -10
POPT_ERROR_BADOPT = -11
POPT_ERROR_UNWANTEDARG = -12
POPT_MESSAGES = {
    POPT_ERROR_NOARG: "missing argument",
    POPT_ERROR_BADOPT: "unknown option",
    POPT_ERROR_UNWANTEDARG: "option does not take an argument",
}


# The kernel's values (model.py has them too: see the module docstring).
AF_INET = 2
AF_INET6 = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
PROTOCOL_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}
SVC_F_PERSISTENT = 0x0001
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020
TUN_FLAG_NOCSUM = 0x0
TUN_FLAG_CSUM = 0x1
TUN_FLAG_REMCSUM = 0x2
IPVS_VERSION = (1, 2, 1)
