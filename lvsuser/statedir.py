"""Where a director keeps what outlives its process.

Kernel IPVS keeps its table when keepalived or ipvsadm exits; lvsuser keeps its own under
/run/lvsuser (tmpfs: gone at reboot, as the kernel's table is).  One director is named by its
control socket, so the same ``--control`` finds the same state after SIGTERM, SIGKILL or an
upgrade, and two directors with different sockets never share anything.

    /run/lvsuser/state/<tag>/rules.json      the rule table and timeouts (control's, versioned)
    /run/lvsuser/state/<tag>/datapath.map    connections, real-server slots, counters (the core's)

``tag`` is short and stable: the socket's base name (for a human reading the directory) and a
hash of its absolute path (for uniqueness).  The guard's nft table is named after it too.
This module only names things; it imports nothing heavy, so the CLI can use it.
"""
from __future__ import annotations

import hashlib
import os
import re

STATE_ROOT = "/run/lvsuser/state"
RULES_FILE = "rules.json"
DATAPATH_FILE = "datapath.map"

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def state_tag(control_path: str) -> str:
    """A file- and nft-safe name for the director behind `control_path` (at most 40 chars)."""
    absolute = os.path.abspath(control_path)
    base = os.path.basename(absolute)
    if base.endswith(".sock"):
        base = base[:-len(".sock")]
    base = _UNSAFE.sub("_", base)[:24] or "control"
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:12]
    return f"{base}_{digest}"


def state_dir(control_path: str, root: str = STATE_ROOT) -> str:
    """The directory holding the state of the director behind `control_path`."""
    return os.path.join(root, state_tag(control_path))
