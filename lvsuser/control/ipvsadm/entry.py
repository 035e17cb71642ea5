"""``main``: one ipvsadm command line from start to exit status."""
from __future__ import annotations

import sys
from io import TextIOBase as TextIO

from lvsuser.control.ipvsadm.constants import PROGRAM
from lvsuser.control.ipvsadm.errors import IpvsadmExit, exit_status
from lvsuser.control.ipvsadm.resolver import Resolver
from lvsuser.control.ipvsadm.session import Session, list_all, process_options


def restore_sigpipe() -> None:
    """Python ignores SIGPIPE; a command-line tool should not (only call this from a CLI)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def split_control_option(argv: list[str]) -> tuple[list[str], str | None]:
    """Take lvsuser's own --control PATH (not an ipvsadm option) out of the arguments."""
    rest: list[str] = []
    control = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            rest.extend(argv[i:])
            break
        if word == "--control" and i + 1 < len(argv):
            control = argv[i + 1]
            i += 2
            continue
        if word.startswith("--control="):
            control = word.split("=", 1)[1]
            i += 1
            continue
        rest.append(word)
        i += 1
    return rest, control


def main(argv: list[str] | None = None, backend=None, *,
         stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, resolver: Resolver | None = None) -> int:
    """Run one ipvsadm command line; returns the exit status ipvsadm would have.

    ``backend``: an in-process Backend; None talks to the director on the control socket."""
    if argv is None:  # the console script: die of SIGPIPE in `... | head` like the C program
        restore_sigpipe()
        argv = sys.argv[1:]
    args, control = split_control_option(list(argv))
    session = Session(backend, control, stdout or sys.stdout, stderr or sys.stderr,
                      stdin if stdin is not None else sys.stdin, resolver or Resolver())
    full_argv = [PROGRAM] + args
    try:
        if len(full_argv) == 1:
            list_all(session, 0)
            code = 0
        else:
            code = process_options(full_argv, session)
    except IpvsadmExit as exc:
        session.out.write(exc.stdout)
        session.err.write(exc.stderr)
        code = exc.code
    finally:
        session.out.flush()
        session.close()
    return exit_status(code)


def console_main() -> None:
    sys.exit(main())
