"""Control plane: how configuration reaches the director.

    ipvsadm.py   ipvsadm 1.31's command line and output, against any Backend
    rules.py     rules files (the `ipvsadm -S` format, plus mark rules), applied all or nothing
    protocol.py  the JSON-lines control protocol (documented there)
    server.py    the control socket server inside `lvsuser run`
    client.py    RemoteBackend: the Backend interface over the control socket
    daemon.py    `lvsuser run`: backend, rules, socket, signals

Configuration flows one way: CLI -> control socket -> daemon -> backend.
"""
