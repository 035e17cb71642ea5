"""`lvsuser run`: the director process -- a backend, its rules, and the control socket.

Theory of operation
-------------------
Start-up is ordered so that callers can wait for the control socket as the sign of readiness:
make sure no live director serves the same socket (its state is named after the socket), find
the table to start with -- ``--rules FILE`` if given (all or nothing: a bad file stops the
start), else the rules saved by the previous run (``state.py``; ``--clean`` discards them) --
build the backend filled with it before it publishes anything (a missing capability is one
``lvsuser: <reason>`` line and exit 1, never a traceback), and only then create the socket.
From then on every change is saved.  SIGTERM/SIGINT with rules in the table keep the state
for the next start (``close(keep_state=True)``); with an empty table the state is removed.  The main thread then sleeps until a signal arrives: SIGTERM/SIGINT stop (socket
removed, backend closed), SIGHUP reloads the rules file.  A reload replaces the whole table in
one transaction -- flush plus the file's rules -- so clients never see a half-loaded table; a
file that fails to parse or apply is logged and the running table is kept.  Signal handlers
only set flags; the main loop polls them and does the work outside the handler.
``--metrics`` and ``--procfs`` (lvsuser/ops) start once the Director exists (the metrics count
the changes it saves) and stop before the backend closes.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Callable, Optional

from lvsuser import statedir
from lvsuser.backends.base import Backend, BackendUnavailable, BatchFailed
from lvsuser.control import protocol, rules
from lvsuser.control.ipvsadm.errors import strerror_for_operation
from lvsuser.control.server import ControlServer, ControlSocketInUse, prepare_path
from lvsuser.control.state import RulesState, StateError

log = logging.getLogger("lvsuser.run")

BACKENDS = ("userspace", "ipvs", "table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser run",
        description="Run the director in the foreground; `lvsuser ipvsadm` configures it.")
    parser.add_argument("--control", default=None,
                        help=f"control socket path (default ${protocol.ENV_SOCKET} or "
                             f"{protocol.DEFAULT_SOCKET})")
    parser.add_argument("--rules", default=None,
                        help="rules file in `ipvsadm -S` format, loaded at start (replacing the "
                             "saved table) and on SIGHUP")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="where the table is saved after every change and found again at "
                             "start (default /run/lvsuser/state/<name of the control socket>)")
    parser.add_argument("--clean", action="store_true",
                        help="discard the saved table (and connections) and start empty")
    parser.add_argument("--backend", choices=BACKENDS, default="userspace",
                        help="userspace: the lvsuser datapath (default); ipvs: kernel IPVS; "
                             "table: the table only, no packet forwarding (tests, dry runs)")
    parser.add_argument("--io", choices=("afpacket", "tun"), default="afpacket",
                        help="userspace backend's packet I/O (default afpacket)")
    parser.add_argument("--interface", action="append", default=None, metavar="IF",
                        help="serve only these interfaces (repeatable; default: all)")
    parser.add_argument("--scheduler-path", action="append", default=[], metavar="PATH",
                        help="load plugin schedulers from this .py file or directory (repeatable); "
                             "installed ones (entry points lvsuser.schedulers) load always")
    parser.add_argument("--max-conns", type=_positive_int, default=None, metavar="N",
                        help="userspace backend's connection-table size (default 4194304; "
                             "memory grows as it fills, about 50 bytes a connection)")
    parser.add_argument("--keepalived-conf", default=None, metavar="FILE",
                        help="run the virtual_server blocks of a keepalived.conf with their "
                             "health checks (its services are owned by it; SIGHUP reloads it)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    from lvsuser.ops import runner as ops_runner
    ops_runner.add_arguments(parser)  # --metrics, --procfs
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its error message


def make_backend(kind: str, io: str = "afpacket", interfaces: Optional[list[str]] = None,
                 max_conns: Optional[int] = None, initial: Optional[list] = None,
                 state_dir: Optional[str] = None, control_path: Optional[str] = None) -> Backend:
    """The backend named on the command line; BackendUnavailable says why it cannot run.

    ``initial``: the batch filling the table before anything is published (not for ipvs,
    whose table lives in the kernel); a refused one raises BatchFailed.  The userspace backend
    given `control_path` claims the network namespace (one director per namespace) and names
    its lasting state (the guard's nft table) after it."""
    if kind == "table":
        from lvsuser.backends.table import TableBackend
        return TableBackend(initial)
    if kind == "userspace":
        try:
            from lvsuser.backends.userspace import UserspaceBackend
        except ImportError as exc:
            raise BackendUnavailable(f"the userspace backend cannot be loaded ({exc}).") from exc
        extra = {} if max_conns is None else {"max_conns": max_conns}
        return UserspaceBackend(io=io, interfaces=interfaces, initial=initial,
                                state_dir=state_dir, control_path=control_path, **extra)
    if kind == "ipvs":
        try:
            from lvsuser.backends.ipvs import IPVSBackend
        except ImportError as exc:
            raise BackendUnavailable(f"the kernel IPVS backend cannot be loaded ({exc}).") from exc
        return IPVSBackend()
    raise BackendUnavailable(f"unknown backend {kind!r}")


def load_schedulers(paths: list[str]) -> list[str]:
    """Register plugin schedulers before any rule names them."""
    try:
        from lvsuser import schedulers
    except ImportError:
        if paths:
            raise ValueError("--scheduler-path given but the scheduler registry is not available")
        return []
    loader = getattr(schedulers, "load_plugins", None)
    if loader is None:
        if paths:
            raise ValueError("--scheduler-path given but plugin schedulers are not supported")
        return []
    names = loader(paths)
    if names:
        log.info("plugin schedulers: %s", ", ".join(names))
    return names


def replace_table(backend: Backend, operations: list[rules.RuleOperation],
                  keep: frozenset = frozenset()) -> None:
    """Make the table exactly the rules file's, atomically (flush + rules in one batch).
    ``keep``: keys of services another owner manages (--keepalived-conf): left as they are,
    their connections untouched."""
    reset: list[rules.RuleOperation] = [rules.RuleOperation(0, "flush", {})]
    if keep:
        reset = [rules.RuleOperation(0, "del_service", {"key": svc.key})
                 for svc in backend.get_services() if svc.key not in keep]
    for rule in backend.get_mark_rules():
        reset.append(rules.RuleOperation(0, "del_mark_rule", {"rule": rule}))
    rules.apply_operations(backend, reset + list(operations))


def notify_systemd(state: str) -> None:
    """sd_notify for Type=notify units: a datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket name
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)


class Director:
    """The running daemon; ``run()`` blocks until stopped.  Usable in-process by tests."""

    def __init__(self, backend: Backend, control_path: str, rules_path: Optional[str] = None,
                 state: Optional[RulesState] = None):
        self.backend = backend
        self.control_path = control_path
        self.rules_path = rules_path
        self.state = state  # where every change is saved; None: nothing is kept
        if state is not None:
            backend.after_change = state.save
        self.server: Optional[ControlServer] = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self.ready = threading.Event()
        self.reloads = 0  # successful reloads, for observers
        self.keepalived = None  # a KeepalivedRunner (--keepalived-conf): reloaded on SIGHUP too

    def load_rules(self) -> None:
        """Initial load; raises RulesError/OSError, leaving the table empty as it was."""
        if self.rules_path:
            operations = rules.load_rules_file(self.rules_path)
            rules.apply_operations(self.backend, operations)
            log.info("loaded %d rules from %s", len(operations), self.rules_path)

    def reload(self) -> bool:
        if self.keepalived is None:
            return self._reload_rules()
        # the rules file replaces everything but the keepalived.conf's services; then what
        # changed in the keepalived.conf applies
        done = self._reload_rules() if self.rules_path else True
        return self.keepalived.reload() and done

    def _reload_rules(self) -> bool:
        if not self.rules_path:
            log.info("SIGHUP: no --rules file to reload")
            return False
        before = self.backend.get_services()
        marks_before = self.backend.get_mark_rules()
        try:
            operations = rules.load_rules_file(self.rules_path)
            keep = self.keepalived.owned() if self.keepalived is not None else frozenset()
            replace_table(self.backend, operations, keep)
        except rules.RulesError as exc:
            log.error("reload of %s refused, running table kept: line %d: %s",
                      self.rules_path, exc.line, exc.message)
            return False
        except OSError as exc:
            log.error("reload of %s failed, running table kept: %s", self.rules_path, exc)
            return False
        self.reloads += 1
        log.info("reloaded %d rules from %s", len(operations), self.rules_path)
        self._log_reload_changes(before, marks_before)
        return True

    def _log_reload_changes(self, before, marks_before) -> None:
        from lvsuser.control.describe import table_changes

        changes = table_changes(before, self.backend.get_services())
        marks_after = self.backend.get_mark_rules()
        changes += [f"added mark {rules.format_mark_rule(r)[len('--mark '):]}"
                    for r in marks_after if r not in marks_before]
        changes += [f"removed mark {rules.format_mark_rule(r)[len('--mark '):]}"
                    for r in marks_before if r not in marks_after]
        for line in changes:
            log.info("reload: %s", line)
        if not changes:
            log.info("reload: no change")

    def close(self) -> None:
        """Close the backend: a table with rules stays for the next start, an empty one is
        forgotten (its state removed)."""
        keep = self.state is not None and not self.backend.is_empty()
        self.backend.close(keep_state=keep)
        if self.state is not None and not keep:
            self.state.discard()
            log.info("the table is empty: saved state %s removed", self.state.directory)
        elif keep:
            log.info("rules kept in %s for the next start", self.state.path)

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def run(self) -> None:
        self.server = ControlServer(self.control_path, self.backend).start()
        log.info("serving control socket %s (backend %s)", self.control_path, self.backend.name)
        self.ready.set()
        notify_systemd("READY=1")
        try:
            while not self._stop_requested:
                # Signal handlers only set flags (an Event.set() from a handler could deadlock on
                # the Event's own lock), so poll them a few times a second.
                self._wake.wait(timeout=0.2)
                self._wake.clear()
                if self._reload_requested and not self._stop_requested:
                    self._reload_requested = False
                    log.info("reloading rules")
                    self.reload()
            log.info("stopping")
        finally:
            notify_systemd("STOPPING=1")
            self.server.stop()
            log.info("control socket %s removed", self.control_path)


def install_signal_handlers(director: Director) -> Callable[[], None]:
    """SIGTERM/SIGINT stop, SIGHUP reloads; returns a function restoring the old handlers."""
    previous = {}

    def on_stop(signum, frame):
        director._stop_requested = True  # only a flag: no locks, no logging in a handler

    def on_hup(signum, frame):
        director._reload_requested = True

    for signum, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop),
                            (signal.SIGHUP, on_hup)):
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _initial_table(args, state: Optional[RulesState]) -> tuple[list, list, str]:
    """The batch the table starts with, the rules-file operations it came from (for line
    numbers), and where it came from (for messages).  Raises RulesError, OSError, StateError."""
    if args.rules:
        operations = rules.load_rules_file(args.rules)
        return [(o.op, o.kwargs) for o in operations], operations, args.rules
    if state is not None:
        return state.load() or [], [], state.path
    return [], [], ""


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="lvsuser[%(process)d] %(levelname)s %(name)s: %(message)s")
    control = args.control or os.environ.get(protocol.ENV_SOCKET) or protocol.DEFAULT_SOCKET
    try:
        load_schedulers(args.scheduler_path)
    except ValueError as exc:  # schedulers.SchedulerError names the plugin at fault
        print(f"lvsuser: {exc}", file=sys.stderr)
        return 1
    try:  # before the state is touched: it is named after the socket, so it may be another's
        prepare_path(control)
    except ControlSocketInUse as exc:
        print(f"lvsuser: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lvsuser: cannot serve the control socket {control}: {exc}", file=sys.stderr)
        return 1
    # kernel IPVS keeps its own table across restarts: nothing to save for it
    state = None
    if args.backend != "ipvs":
        state = RulesState(args.state_dir or statedir.state_dir(control))
        if args.clean and state.discard():
            log.info("--clean: saved state in %s discarded", state.directory)
    try:
        initial, file_operations, source = _initial_table(args, state)
    except rules.RulesError as exc:
        print(f"lvsuser: {args.rules}: line {exc.line}: {exc.message}", file=sys.stderr)
        return 1
    except StateError as exc:
        print(f"lvsuser: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lvsuser: cannot read rules file: {exc}", file=sys.stderr)
        return 1
    try:
        backend = make_backend(args.backend, io=args.io, interfaces=args.interface,
                               max_conns=args.max_conns, initial=initial or None,
                               state_dir=state.directory if state else None,
                               control_path=control)
    except BackendUnavailable as exc:
        print(f"lvsuser: {exc}", file=sys.stderr)
        return 1
    except BatchFailed as exc:
        if file_operations:
            failed = file_operations[exc.index] if 0 <= exc.index < len(file_operations) else None
            line = failed.line if failed else 0
            message = strerror_for_operation(failed.op if failed else "", exc.errno)
            print(f"lvsuser: {args.rules}: line {line}: {message}", file=sys.stderr)
        else:
            print(f"lvsuser: the saved rules in {source} cannot be applied ({exc.message or exc}); "
                  f"start with --clean to discard them.", file=sys.stderr)
        return 1
    if args.backend == "ipvs" and args.rules:  # the kernel's own table: applied to it as before
        try:
            rules.apply_operations(backend, file_operations)
        except rules.RulesError as exc:
            print(f"lvsuser: {args.rules}: line {exc.line}: {exc.message}", file=sys.stderr)
            backend.close()
            return 1
    if initial:
        log.info("starting with %d rules from %s", len(initial), source)
    director = Director(backend, control, args.rules, state)
    if args.keepalived_conf:  # its services join the table before the socket says "ready"
        from lvsuser.keepalived.runner import KeepalivedConfError, KeepalivedRunner
        director.keepalived = KeepalivedRunner(args.keepalived_conf, backend)
        try:
            director.keepalived.start()
        except KeepalivedConfError as exc:
            print(f"lvsuser: {args.keepalived_conf} cannot be run:\n{exc}", file=sys.stderr)
            director.keepalived.close()
            backend.close(keep_state=state is not None and not backend.is_empty())
            return 1
    from lvsuser.ops import runner as ops_runner
    try:  # after Director: the metrics count the changes it saves
        extras = ops_runner.start(backend, metrics=args.metrics, procfs=args.procfs)
    except ops_runner.OpsError as exc:
        print(f"lvsuser: {exc}", file=sys.stderr)
        if director.keepalived is not None:
            director.keepalived.close()
        backend.close(keep_state=state is not None and not backend.is_empty())
        return 1
    stopped = False
    try:
        if state is not None and args.rules:
            state.save(backend)  # the file defines the table now, for the next start too
        restore_handlers = install_signal_handlers(director)
        try:
            director.run()
            stopped = True
        except ControlSocketInUse as exc:
            print(f"lvsuser: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"lvsuser: cannot serve the control socket {control}: {exc}", file=sys.stderr)
            return 1
        finally:
            restore_handlers()
    finally:
        extras.stop()
        if director.keepalived is not None:
            director.keepalived.close()  # checks stop; the rules stay with the table
        if stopped:
            director.close()
        else:  # not a clean stop: what was saved stays
            backend.close(keep_state=state is not None and not backend.is_empty())
    return 0
