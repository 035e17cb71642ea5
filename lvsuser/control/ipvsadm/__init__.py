"""``lvsuser ipvsadm``: the ipvsadm 1.31 command line, byte for byte, against any Backend.

Theory of operation
-------------------
ipvsadm parses its argument vector with popt, checks the combination of command and options
against a table, sends one request to IPVS and prints either a listing or the message its
``ipvs_strerror`` table has for (request, errno).  Users' scripts parse all of that, so each step
is reproduced as ipvsadm 1.31 does it, one module per step:

    constants.py  ipvsadm.c's commands, options, popt table and format flags (plain data)
    popt.py       popt's option walker (clusters, glued arguments, leftovers, ``--``)
    values.py     argument parsing helpers: C's strtol/atoi/inet_aton, parse_service, ...
    args.py       what a command line asks for (ServiceArgs, DestArgs, CommandEntry), and its
                  wire form for the control protocol
    command.py    the option switch, the command/option table checks, the operation a command
                  makes (``parse_command``, ``wire_operation``, ``table_operation``)
    errors.py     ``IpvsadmExit`` (text + exit status: 2 bad input, 255 refused, 1 no listing)
                  and libipvs's ``ipvs_strerror``
    resolver.py   name resolution as ipvsadm asks the C library (``-n`` turns it off)
    qsort.py      the listing order: libipvs's wrapping comparisons through glibc's qsort
    output.py     listings: print_service_entry and print_conn in every format
    usage.py      ``-h`` and ``-v``
    session.py    running a command against a backend or the director's control socket
    entry.py      ``main``

A command line must start like a small program (a health checker issues thousands): modules
import only what their command needs.  A rule change (``-a``, ``-e``, ``-d``, ...) imports the
parser, ``socket`` and ``json`` and sends the wire form of its arguments; the model, the
listings and the name services are imported by the commands that use them.  Keep it so:
``python3 -X importtime -m lvsuser ipvsadm -e ...`` shows what a change costs.

Deliberate differences: ``-R`` applies all lines or none (see ``rules``); ``--start-daemon``
reports that connection sync is not supported; the backend is reached lazily, so ``-h`` and
parse errors work without a running director.
"""
from lvsuser.control.ipvsadm.entry import main

__all__ = ["main"]
