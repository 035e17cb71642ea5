"""`lvsuser service`: install or remove the systemd unit, and the ipvsadm drop-in.

Theory of operation
-------------------
``service install`` writes one file, ``ROOT/etc/systemd/system/lvsuser.service``, whose first
line marks it as ours.  ``service remove`` deletes that file only if it still carries the mark,
so it never removes a unit someone else wrote; an existing foreign unit is not overwritten
unless ``--force``, and then it is kept as ``lvsuser.service.lvsuser-saved`` and put back by
``remove``.  With the default root (``/``) and a running systemd, both run ``systemctl
daemon-reload`` (nothing is enabled or started: that stays the operator's
``systemctl enable --now lvsuser``).  With ``--root DIR`` nothing outside DIR is touched.

The unit: ``Type=notify`` (the director sends READY=1 once its control socket accepts, and
STOPPING=1), ``ExecReload`` sends SIGHUP (the rules file is reloaded, all or nothing),
``RuntimeDirectory=lvsuser`` with ``RuntimeDirectoryPreserve=yes`` so /run/lvsuser -- the
control socket and the saved table under /run/lvsuser/state -- outlives a restart and the new
director adopts the table.  Hardening keeps what a director needs and no more: the capability
bounding set is CAP_NET_ADMIN (nftables guard, routes, TUN device, netlink) and CAP_NET_RAW
(AF_PACKET rings), plus CAP_NET_BIND_SERVICE for a metrics port below 1024; the file system is
read-only except /run/lvsuser and the --procfs directory; /dev only has /dev/net/tun; kernel
tunables stay writable because the TUN I/O mode sets per-interface sysctls.

``service ipvsadm-shim install`` puts a two-line ``ipvsadm`` script (marked as ours) at
ROOT/usr/sbin/ipvsadm -- and ROOT/sbin/ipvsadm when /sbin is not a link to usr/sbin -- that
execs ``lvsuser ipvsadm``, so tools that run /sbin/ipvsadm or /usr/sbin/ipvsadm and parse its
output drive lvsuser.  A real ipvsadm found there is left alone unless ``--force``; then it is
renamed ``ipvsadm.lvsuser-saved`` and ``ipvsadm-shim remove`` renames it back.  Remove deletes
only a file that carries our mark.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Optional

UNIT_NAME = "lvsuser.service"
UNIT_DIR = "etc/systemd/system"
MARK = "# Written by `lvsuser service install`; `lvsuser service remove` deletes it."
SHIM_MARK = "# lvsuser ipvsadm shim: `lvsuser service ipvsadm-shim remove` takes it away."
SAVED_SUFFIX = ".lvsuser-saved"
DEFAULT_CONTROL = "/run/lvsuser/control.sock"

CAPABILITIES = ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE")


class ServiceError(Exception):
    """str(exc) is one sentence for the user."""


def lvsuser_command() -> list[str]:
    """How the unit and the shim start lvsuser: the installed script, else this Python."""
    found = shutil.which("lvsuser")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "lvsuser"]


def systemd_quote(word: str) -> str:
    """One word of an ExecStart= line: quoted when needed, with % and $ escaped for systemd."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in ' \t\n"\'\\;'):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def shell_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def double_quoted(word: str) -> str:
    """WORD escaped for the inside of a shell double-quoted string."""
    for special in ("\\", '"', "$", "`"):
        word = word.replace(special, "\\" + special)
    return word


def _absolute(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path else None


def render_unit(command: list[str], control: str = DEFAULT_CONTROL, rules: Optional[str] = None,
                backend: Optional[str] = None, metrics: Optional[str] = None,
                procfs: Optional[str] = None, state_dir: Optional[str] = None,
                extra_args: Optional[list[str]] = None) -> str:
    """The text of lvsuser.service for these options (paths must be absolute)."""
    args = list(command) + ["run", "--control", control]
    if rules:
        args += ["--rules", rules]
    if backend:
        args += ["--backend", backend]
    if state_dir:
        args += ["--state-dir", state_dir]
    if metrics:
        args += ["--metrics", metrics]
    if procfs:
        args += ["--procfs", procfs]
    args += list(extra_args or [])
    writable = ["/run/lvsuser"]
    for path in (os.path.dirname(control), state_dir, procfs):
        if path and path not in writable and not path.startswith("/run/lvsuser/"):
            writable.append(path)
    # ProtectSystem=strict makes everything else read-only, and ReadWritePaths= needs the
    # directories to exist: made first, outside the sandbox ("+")
    make_dirs = [f"ExecStartPre=+/bin/mkdir -p {systemd_quote(path)}" for path in writable[1:]]
    return "\n".join([
        MARK,
        "[Unit]",
        "Description=lvsuser: Linux Virtual Server director in user space",
        "Documentation=man:ipvsadm(8)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        *make_dirs,
        "ExecStart=" + " ".join(systemd_quote(word) for word in args),
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=1s",
        "TimeoutStopSec=30s",
        "Environment=PYTHONUNBUFFERED=1",
        "# /run/lvsuser holds the control socket and the saved table (state/): it outlives a",
        "# restart, and the next director adopts the table",
        "RuntimeDirectory=lvsuser",
        "RuntimeDirectoryMode=0755",
        "RuntimeDirectoryPreserve=yes",
        "# hardening: packets and netlink need CAP_NET_ADMIN and CAP_NET_RAW, nothing else",
        "CapabilityBoundingSet=" + " ".join(CAPABILITIES),
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=" + " ".join(systemd_quote(path) for path in writable),
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/net/tun rw",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def _carries(path: str, mark: str) -> bool:
    try:
        with open(path, "rb") as existing:
            head = existing.read(4096)
    except OSError:
        return False
    return mark.encode() in head


def _write(path: str, text: str, mode: int) -> None:
    temporary = path + ".lvsuser-new"
    with open(temporary, "w") as out:
        out.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _systemd_running(root: str) -> bool:
    return root == "/" and os.path.isdir("/run/systemd/system") and shutil.which("systemctl")


def _daemon_reload(root: str, say) -> None:
    if _systemd_running(root):
        result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
        if result.returncode != 0:
            say(f"systemctl daemon-reload failed: {result.stderr.strip()}")


def unit_path(root: str) -> str:
    return os.path.join(root, UNIT_DIR, UNIT_NAME)


def install_unit(root: str, text: str, force: bool = False, say=print) -> str:
    """Write the unit under ROOT; returns its path.  ServiceError if a foreign one is there."""
    path = unit_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path) and not _carries(path, MARK):
        if not force:
            raise ServiceError(f"{path} exists and was not written by lvsuser; "
                               f"--force keeps it as {UNIT_NAME}{SAVED_SUFFIX} and replaces it")
        os.replace(path, path + SAVED_SUFFIX)
        say(f"kept the existing unit as {path}{SAVED_SUFFIX}")
    _write(path, text, 0o644)
    _daemon_reload(root, say)
    return path


def remove_unit(root: str, say=print) -> bool:
    """Delete our unit (and put back a unit it replaced); False if there was none of ours."""
    path = unit_path(root)
    if not os.path.lexists(path):
        say(f"{path}: not installed")
        return False
    if not _carries(path, MARK):
        raise ServiceError(f"{path} was not written by lvsuser: left alone")
    os.unlink(path)
    saved = path + SAVED_SUFFIX
    if os.path.lexists(saved):
        os.replace(saved, path)
        say(f"put back the unit that was there before ({path})")
    _daemon_reload(root, say)
    return True


# --- the ipvsadm drop-in -------------------------------------------------------------------
def shim_paths(root: str) -> list[str]:
    """Where tools look for ipvsadm: /usr/sbin, and /sbin when it is a directory of its own."""
    paths = [os.path.join(root, "usr/sbin/ipvsadm")]
    sbin = os.path.join(root, "sbin")
    usr_sbin = os.path.join(root, "usr/sbin")
    if os.path.isdir(sbin) and not os.path.islink(sbin) and \
            os.path.realpath(sbin) != os.path.realpath(usr_sbin):
        paths.append(os.path.join(sbin, "ipvsadm"))
    return paths


def render_shim(command: list[str], control: Optional[str] = None) -> str:
    lines = ["#!/bin/sh", SHIM_MARK]
    if control:  # a default only: the caller's LVSUSER_CONTROL still wins
        lines.append(f'LVSUSER_CONTROL="${{LVSUSER_CONTROL:-{double_quoted(control)}}}"')
        lines.append("export LVSUSER_CONTROL")
    lines.append("exec " + " ".join(shell_quote(word) for word in command) + " ipvsadm \"$@\"")
    return "\n".join(lines) + "\n"


def install_shim(root: str, text: str, force: bool = False, say=print) -> list[str]:
    paths = shim_paths(root)
    for path in paths:  # check all first: all or nothing
        if os.path.lexists(path) and not _carries(path, SHIM_MARK) and not force:
            raise ServiceError(f"{path} is a real ipvsadm; --force keeps it as "
                               f"ipvsadm{SAVED_SUFFIX} and puts the shim in its place")
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path) and not _carries(path, SHIM_MARK):
            os.replace(path, path + SAVED_SUFFIX)
            say(f"kept the real ipvsadm as {path}{SAVED_SUFFIX}")
        _write(path, text, 0o755)
    return paths


def remove_shim(root: str, say=print) -> list[str]:
    removed = []
    for path in shim_paths(root):
        if not os.path.lexists(path):
            continue
        if not _carries(path, SHIM_MARK):
            say(f"{path} is not the lvsuser shim: left alone")
            continue
        os.unlink(path)
        removed.append(path)
        saved = path + SAVED_SUFFIX
        if os.path.lexists(saved):
            os.replace(saved, path)
            say(f"put back the real ipvsadm at {path}")
    if not removed:
        say("the ipvsadm shim is not installed")
    return removed


# --- the command ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser service",
        description="Install or remove lvsuser's systemd unit, and the ipvsadm drop-in.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    install = sub.add_parser("install", help="write lvsuser.service (then: systemctl enable --now "
                                             "lvsuser)")
    install.add_argument("--root", default="/", help="install under this directory (default /)")
    install.add_argument("--control", default=DEFAULT_CONTROL, help="control socket path")
    install.add_argument("--rules", default=None, metavar="FILE",
                         help="rules file (ipvsadm -S format) loaded at start and on reload")
    install.add_argument("--backend", choices=("userspace", "ipvs", "table"), default=None)
    install.add_argument("--state-dir", default=None, metavar="DIR")
    install.add_argument("--metrics", default=None, metavar="ADDR:PORT")
    install.add_argument("--procfs", default=None, metavar="DIR")
    install.add_argument("--exec", dest="command", default=None, metavar="PATH",
                         help="the lvsuser program the unit runs (default: the one found on PATH)")
    install.add_argument("--force", action="store_true",
                         help="replace a unit lvsuser did not write (it is kept and put back by "
                              "remove)")
    install.add_argument("run_args", nargs="*", metavar="-- RUN-ARGS",
                         help="more `lvsuser run` options, after --")

    remove = sub.add_parser("remove", help="delete the unit that install wrote")
    remove.add_argument("--root", default="/")

    shim = sub.add_parser("ipvsadm-shim", help="make /usr/sbin/ipvsadm run `lvsuser ipvsadm`")
    shim.add_argument("shim_action", choices=("install", "remove"))
    shim.add_argument("--root", default="/")
    shim.add_argument("--control", default=None, help="control socket the shim talks to by "
                                                       "default ($LVSUSER_CONTROL still wins)")
    shim.add_argument("--exec", dest="command", default=None, metavar="PATH")
    shim.add_argument("--force", action="store_true",
                      help="replace a real ipvsadm (kept, and put back by remove)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    root = os.path.abspath(args.root)
    command = [os.path.abspath(args.command)] if getattr(args, "command", None) else lvsuser_command()
    try:
        if args.action == "install":
            if args.metrics:
                from lvsuser.ops.metrics import parse_listen_address
                try:
                    parse_listen_address(args.metrics)
                except ValueError as exc:
                    raise ServiceError(f"--metrics {args.metrics}: {exc}") from None
            text = render_unit(command, control=os.path.abspath(args.control),
                               rules=_absolute(args.rules), backend=args.backend,
                               metrics=args.metrics, procfs=_absolute(args.procfs),
                               state_dir=_absolute(args.state_dir), extra_args=args.run_args)
            path = install_unit(root, text, force=args.force)
            print(f"wrote {path}")
            if root == "/":
                print("start it with: systemctl enable --now lvsuser")
            return 0
        if args.action == "remove":
            if remove_unit(root):
                print(f"removed {unit_path(root)}")
            return 0
        if args.shim_action == "install":
            for path in install_shim(root, render_shim(command, _absolute(args.control)),
                                     force=args.force):
                print(f"wrote {path}")
            return 0
        for path in remove_shim(root):
            print(f"removed {path}")
        return 0
    except ServiceError as exc:
        print(f"lvsuser service: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lvsuser service: {exc}", file=sys.stderr)
        return 1
