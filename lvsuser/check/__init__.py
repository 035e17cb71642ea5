"""Health checks with keepalived's semantics.

    config.py      what to check (virtual servers, real servers, checker blocks), defaults
    base.py        Target/Result: what a checker gets and gives back
    tcp.py http.py misc.py udp.py dns.py ping.py   the checkers, one per file (keepalived's
                   check_tcp.c, check_http.c + check_ssl.c, check_misc.c, ...)
    realserver.py  per-checker and per-real-server state machine (no I/O)
    ipwrapper.py   the one place where results become rule changes (quorum, sorry server,
                   inhibit_on_failure, notify scripts)
    scheduler.py   the asyncio loop in one thread of the director
    manager.py     start, reload (only differences applied) and stop of a configuration
"""
