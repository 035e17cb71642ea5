"""Rule changes in words, for the log: each operation as the ipvsadm line that makes it.

The control protocol carries operations, not command lines, so the daemon renders what was
asked from the operation itself, with ipvsadm's own rule format (the ``-S`` output):
``-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 1``.  ``table_changes`` compares two tables
(before and after a SIGHUP reload) and says what was added, removed and changed.
"""
from __future__ import annotations

import io

from lvsuser import model
from lvsuser.control.ipvsadm.constants import FMT_NUMERIC, FMT_RULE
from lvsuser.control.ipvsadm.output import Printer, format_service_entry
from lvsuser.control.ipvsadm.resolver import NumericResolver

_PRINTER = Printer(io.StringIO(), NumericResolver())
_RULE = FMT_RULE | FMT_NUMERIC


def _service_line(svc: model.Service) -> str:
    """``-A -t VIP:PORT -s SCHED ...``"""
    bare = model.Service(af=svc.af, protocol=svc.protocol, addr=svc.addr, port=svc.port,
                         fwmark=svc.fwmark, scheduler=svc.scheduler, flags=svc.flags,
                         timeout=svc.timeout, netmask=svc.netmask, pe_name=svc.pe_name)
    return format_service_entry(_PRINTER, bare, _RULE).splitlines()[0]


def _service_of(key: model.ServiceKey, dests=()) -> model.Service:
    return model.Service(af=key.af, protocol=key.protocol, addr=key.addr, port=key.port,
                         fwmark=key.fwmark, dests=list(dests))


def _service_name(key: model.ServiceKey) -> str:
    """``-t VIP:PORT`` (or ``-f MARK``), as in ``-D -t VIP:PORT``."""
    return _service_line(_service_of(key)).split(" -s ", 1)[0][len("-A "):]


def _dest_line(key: model.ServiceKey, dest: model.Dest) -> str:
    """``-a -t VIP:PORT -r RIP:PORT -m -w 1 ...``"""
    return format_service_entry(_PRINTER, _service_of(key, [dest]), _RULE).splitlines()[1]


def describe_operation(op: str, args: dict) -> str:
    """One operation (a Backend method and its arguments) as the ipvsadm line that asks it."""
    try:
        if op == "add_service":
            return _service_line(args["svc"])
        if op == "edit_service":
            return "-E" + _service_line(args["svc"])[2:]
        if op == "del_service":
            return f"-D {_service_name(args['key'])}"
        if op == "flush":
            return "-C"
        if op == "zero":
            return "-Z" if args.get("key") is None else f"-Z {_service_name(args['key'])}"
        if op == "add_dest":
            return _dest_line(args["key"], args["dest"])
        if op == "edit_dest":
            return "-e" + _dest_line(args["key"], args["dest"])[2:]
        if op == "del_dest":
            line = _dest_line(args["key"], args["dest"])
            return "-d" + line[2:line.index(" -r ")] + " -r " + line.split(" -r ", 1)[1].split(" ")[0]
        if op == "set_timeouts":
            t = args["timeouts"]
            return f"--set {t.tcp} {t.tcp_fin} {t.udp}"
        if op in ("add_mark_rule", "del_mark_rule"):
            from lvsuser.control.rules import format_mark_rule

            return f"mark {op[:3]} {format_mark_rule(args['rule'])[len('--mark '):]}"
        if op == "start_daemon":
            return f"--start-daemon {args['daemon'].state}"
        if op == "stop_daemon":
            return f"--stop-daemon {args['state']}"
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        pass
    return f"{op} {args!r}"  # arguments of an unexpected shape: say what came


# --- what a reload changed --------------------------------------------------------------------
def _service_settings(svc: model.Service) -> tuple:
    return (svc.scheduler, svc.flags & ~model.SVC_F_HASHED, svc.timeout, svc.netmask, svc.pe_name)


def _dest_settings(dest: model.Dest) -> tuple:
    return (int(dest.fwd), dest.weight, dest.u_threshold, dest.l_threshold, int(dest.tun_type),
            dest.tun_port, dest.tun_flags)


def table_changes(before: list[model.Service], after: list[model.Service]) -> list[str]:
    """What turned ``before`` into ``after``: one line per service or real server added,
    removed or changed, as ipvsadm lines ("added -A ...", "removed -d ...", "changed -e ...")."""
    old = {svc.key: svc for svc in before}
    new = {svc.key: svc for svc in after}
    lines = []
    for key, svc in new.items():
        if key not in old:
            lines.append(f"added {_service_line(svc)}")
        elif _service_settings(svc) != _service_settings(old[key]):
            lines.append(f"changed {describe_operation('edit_service', {'svc': svc})}")
        old_dests = {(d.addr, d.port): d for d in old[key].dests} if key in old else {}
        new_dests = {(d.addr, d.port): d for d in svc.dests}
        for where, dest in reversed(list(new_dests.items())):  # oldest first, as added
            if where not in old_dests:
                lines.append(f"added {_dest_line(key, dest)}")
            elif _dest_settings(dest) != _dest_settings(old_dests[where]):
                lines.append(f"changed {describe_operation('edit_dest', {'key': key, 'dest': dest})}")
        for where, dest in old_dests.items():
            if where not in new_dests:
                lines.append(f"removed {describe_operation('del_dest', {'key': key, 'dest': dest})}")
    for key in old:
        if key not in new:
            lines.append(f"removed {describe_operation('del_service', {'key': key})}")
    return lines
