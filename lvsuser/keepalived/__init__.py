"""keepalived.conf for lvsuser: parser.py (syntax, include), config.py (meaning), cli.py
(`lvsuser keepalived check FILE`)."""
