"""How ipvsadm ends: ``IpvsadmExit`` carries its text and status; ``ipvs_strerror`` its messages.

ipvsadm exits 2 for bad input, 255 (-1) for a refused request or a popt error, 1 when a listing
cannot be produced.  A refused request is reported with libipvs's ``ipvs_strerror`` table, which
is keyed by the libipvs function a request went through and the errno IPVS returned.
"""
from __future__ import annotations

import errno
import os


class IpvsadmExit(Exception):
    """ipvsadm ends here: ``stdout``/``stderr`` text to print and the exit status."""

    def __init__(self, code: int, stderr: str = "", stdout: str = ""):
        super().__init__(code, stderr)
        self.code = code
        self.stderr = stderr
        self.stdout = stdout


def fail(code: int, message: str) -> None:
    raise IpvsadmExit(code, message + "\n")


def tryhelp_exit(program: str, code: int) -> None:
    raise IpvsadmExit(code, f"Try `{program} -h' or '{program} --help' for more information.\n")


def exit_status(code: int) -> int:
    return code & 0xFF


def unreachable(exc: OSError) -> None:
    """What ipvsadm says when IPVS is missing, naming the socket instead of the module."""
    fail(2, f"Can't initialize ipvs: {exc.strerror or exc}\n"
            "Are you sure that the lvsuser director is running (lvsuser run)?")


# libipvs function each operation goes through, for ipvs_strerror.
_LIBIPVS_FUNCTION = {
    "flush": "flush", "add_service": "add_service", "edit_service": "update_service",
    "del_service": "del_service", "zero": "zero_service", "add_dest": "add_dest",
    "edit_dest": "update_dest", "del_dest": "del_dest", "set_timeouts": "set_timeout",
    "start_daemon": "start_daemon", "stop_daemon": "stop_daemon",
    "get_services": "get_services", "get_dests": "get_dests", "get_service": "get_service",
    "add_mark_rule": "mark_rule", "del_mark_rule": "mark_rule",
}

_STRERROR_TABLE = [
    ("add_service", errno.EEXIST, "Service already exists"),
    ("add_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("update_service", errno.ESRCH, "No such service"),
    ("update_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("del_service", errno.ESRCH, "No such service"),
    ("zero_service", errno.ESRCH, "No such service"),
    ("add_dest", errno.ESRCH, "Service not defined"),
    ("add_dest", errno.EEXIST, "Destination already exists"),
    ("update_dest", errno.ESRCH, "Service not defined"),
    ("update_dest", errno.ENOENT, "No such destination"),
    ("del_dest", errno.ESRCH, "Service not defined"),
    ("del_dest", errno.ENOENT, "No such destination"),
    ("start_daemon", errno.EEXIST, "Daemon has already run"),
    ("stop_daemon", errno.ESRCH, "No daemon is running"),
    ("get_services", errno.ESRCH, "No such service"),
    ("get_dests", errno.ESRCH, "No such service"),
    ("get_service", errno.ESRCH, "No such service"),
    # lvsuser's own: connection sync is not implemented by the user-space director.
    ("start_daemon", errno.ENOSYS, "Connection sync daemon is not supported by lvsuser yet"),
    ("stop_daemon", errno.ENOSYS, "Connection sync daemon is not supported by lvsuser yet"),
    (None, errno.EPERM, "Permission denied (you must be root)"),
    (None, errno.EINVAL, "Invalid operation.  Possibly wrong module version, address not unicast, ..."),
    (None, errno.ENOPROTOOPT, "Protocol not available"),
    (None, errno.ENOMEM, "Memory allocation problem"),
    (None, errno.EOPNOTSUPP, "Operation not supported with IPv6"),
    (None, errno.EAFNOSUPPORT, "Operation not supported with specified address family"),
    (None, errno.EMSGSIZE, "Module is wrong version"),
]


def ipvs_strerror(function: str | None, err: int) -> str:
    for func, code, message in _STRERROR_TABLE:
        if (func is None or func == function) and code == err:
            return message
    return os.strerror(err)


def strerror_for_operation(op: str, err: int) -> str:
    """ipvs_strerror for a Backend operation name (``edit_dest`` went through ``update_dest``)."""
    return ipvs_strerror(_LIBIPVS_FUNCTION.get(op, op), err)
