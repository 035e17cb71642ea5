#!/usr/bin/env python3
"""Capture /proc/net/ip_vs, ip_vs_stats and ip_vs_conn from real kernel IPVS, for --procfs.

Boots the kernel oracle once (tools/ipvs_vm.py), loads tests/data/procfs/rules.txt with
``ipvsadm -R`` (IPv4, IPv6, fwmark, SCTP; persistence, a netmask, one-packet scheduling; every
forwarding method), and prints the three files and the kernel's CONFIG_HZ.  Back on the host it
writes them to tests/data/procfs/{ip_vs,ip_vs_stats,ip_vs_conn}.txt and meta.json, which
tests/unit/test_procfs.py compares byte for byte with what lvsuser writes for the same rules.

    python3 tools/capture_procfs_refs.py          # about two minutes (QEMU/TCG boot)
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "tests", "data", "procfs")
FILES = ("ip_vs", "ip_vs_stats", "ip_vs_conn")
SEPARATOR = "=== lvsuser-capture "

GUEST_SCRIPT = r"""
set -e
ipvsadm -C
ipvsadm -R < rules.txt
for f in ip_vs ip_vs_stats ip_vs_conn; do
    echo "=== lvsuser-capture $f"
    cat /proc/net/$f
done
echo "=== lvsuser-capture meta"
echo "kernel $(uname -r)"
grep '^CONFIG_HZ=' /boot/config-$(uname -r) 2>/dev/null || echo "CONFIG_HZ=unknown"
ipvsadm -C
"""


def _vm():
    spec = importlib.util.spec_from_file_location("lvsuser_tools_ipvs_vm",
                                                  os.path.join(REPO, "tools", "ipvs_vm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def split_capture(stdout: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    name = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith(SEPARATOR):
            name = line[len(SEPARATOR):].strip()
            parts[name] = ""
        elif name is not None:
            parts[name] += line
    return parts


def main() -> int:
    with open(os.path.join(DATA_DIR, "rules.txt")) as f:
        rules = f.read()
    result = _vm().run_in_guest(GUEST_SCRIPT, timeout=400, files={"rules.txt": rules})
    if result.rc != 0:
        sys.stderr.write(result.stdout + result.stderr + result.console[-3000:])
        return 1
    parts = split_capture(result.stdout)
    for name in FILES:
        with open(os.path.join(DATA_DIR, f"{name}.txt"), "w") as f:
            f.write(parts[name])
    meta = dict(line.split(" ", 1) if " " in line else line.split("=", 1)
                for line in parts["meta"].splitlines())
    with open(os.path.join(DATA_DIR, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {DATA_DIR}: {', '.join(FILES)}, meta.json ({meta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
