"""The director's view of its own namespace: interfaces, routes and neighbours towards the real
servers (forwarding.py), the nftables guard that keeps the director's kernel from answering VIP
traffic itself (guard.py), and the netlink watcher that republishes when any of that changes
(monitor.py)."""
