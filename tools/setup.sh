#!/usr/bin/env bash
# Sets up a fresh machine for lvsuser: system packages (apt), then the package itself (pip).
# Idempotent; run as root. Used by README's two commands and by .ci/run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
apt_pkgs=(iproute2 nftables tcpdump curl ethtool
          qemu-system-x86 linux-image-amd64 busybox-static ipvsadm kmod
          nginx-light wrk netsniff-ng linux-perf keepalived)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx from Debian starts a server in the root namespace; the tests run their own in namespaces.
systemctl disable --now nginx >/dev/null 2>&1 || true
pkill -x nginx >/dev/null 2>&1 || true
# keepalived: its sample configurations feed the keepalived.conf tests; its daemon never runs here
# (lvsuser runs the checks; the QEMU oracle runs its own keepalived).
systemctl disable --now keepalived >/dev/null 2>&1 || true
pkill -x keepalived >/dev/null 2>&1 || true
python3 -m pip install -q --root-user-action=ignore -r "$here/requirements-dev.txt"
python3 -m pip install -q --root-user-action=ignore --no-build-isolation -e "$here"
