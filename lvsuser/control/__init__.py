"""Control plane: how configuration reaches the director.

    ipvsadm/     ipvsadm 1.31's command line and output, against any Backend (a package: one
                 module per job, see its __init__)
    rules.py     rules files (the `ipvsadm -S` format, plus mark rules), applied all or nothing
    protocol.py  the JSON-lines control protocol (documented there)
    server.py    the control socket server inside `lvsuser run`
    link.py      one client connection to the control socket (no model: cheap to import)
    client.py    RemoteBackend: the Backend interface over the control socket
    daemon.py    `lvsuser run`: backend, rules, socket, signals
    state.py     the rule table saved after every change and found again at start
    describe.py  rule changes as ipvsadm lines, for the log

Configuration flows one way: CLI -> control socket -> daemon -> backend.
"""
