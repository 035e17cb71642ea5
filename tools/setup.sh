#!/usr/bin/env bash
# Sets up a fresh machine for lvsuser: system packages (apt), then the package itself (pip).
# Idempotent; run as root. Used by README's two commands and by .ci/run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
apt_pkgs=(iproute2 nftables tcpdump curl ethtool
          qemu-system-x86 linux-image-amd64 busybox-static ipvsadm kmod
          nginx-light wrk netsniff-ng linux-perf
          prometheus prometheus-node-exporter keepalived)
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
# Debian's prometheus and prometheus-node-exporter start daemons in the root namespace; the
# metrics tests run their own inside namespaces.  Stop only the root namespace's copies.
for unit in prometheus prometheus-node-exporter; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
    if [ -x "/etc/init.d/$unit" ]; then "/etc/init.d/$unit" stop >/dev/null 2>&1 || true; fi
done
root_ns=$(readlink "/proc/$$/ns/net")   # this script runs in the root namespace
for proc in /proc/[0-9]*; do
    case "$(readlink "$proc/exe" 2>/dev/null)" in
        /usr/bin/prometheus|/usr/bin/prometheus-node-exporter)
            if [ "$(readlink "$proc/ns/net" 2>/dev/null)" = "$root_ns" ]; then
                kill "${proc#/proc/}" 2>/dev/null || true
            fi ;;
    esac
done
python3 -m pip install -q --root-user-action=ignore -r "$here/requirements-dev.txt"
python3 -m pip install -q --root-user-action=ignore --no-build-isolation -e "$here"
