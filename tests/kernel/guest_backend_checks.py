"""Runs INSIDE the kernel-IPVS guest: IPVSBackend called directly (no CLI) against the real ipvsadm.

Each case is (ipvsadm command lines, the same change as backend calls).  Both are applied to a clean
kernel table in turn; the real ipvsadm's listings must read back identically, and a refused
operation must raise IPVSError with the errno the kernel gave ipvsadm.  Prints a JSON report.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from lvsuser import model  # noqa: E402
from lvsuser.backends.ipvs import IPVSBackend  # noqa: E402
from lvsuser.model import Dest, Forward, IPVSError, Service, ServiceKey, Timeouts, TunType  # noqa: E402

ip = ipaddress.ip_address
LISTINGS = [["-Sn"], ["-Ln"], ["-Ln", "--thresholds"], ["-Ln", "--persistent-conn"],
            ["-Ln", "--tun-info"], ["-L", "--timeout"]]

WEB = Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=ip("198.18.0.1"), port=80,
              scheduler="rr")
DNS6 = Service(af=model.AF_INET6, protocol=model.IPPROTO_UDP, addr=ip("2001:db8::1"), port=53,
               scheduler="sh", flags=model.SVC_F_PERSISTENT | model.SVC_F_SCHED_SH_PORT,
               timeout=120, netmask=64)
MARK = Service(af=model.AF_INET, fwmark=7, scheduler="mh",
               flags=model.SVC_F_PERSISTENT | model.SVC_F_SCHED_MH_FALLBACK, timeout=60,
               netmask=0xFFFFFF00)
MARK6 = Service(af=model.AF_INET6, fwmark=8, scheduler="wlc", netmask=128)
OPS = Service(af=model.AF_INET, protocol=model.IPPROTO_UDP, addr=ip("198.18.0.2"), port=514,
              scheduler="rr", flags=model.SVC_F_ONEPACKET)


def dest(addr, port, fwd=Forward.ROUTE, **kw):
    return Dest(addr=ip(addr), port=port, fwd=fwd, **kw)


# (name, ipvsadm lines, backend calls, expected errno of the last call or None)
CASES = [
    ("services and dests",
     ["-A -t 198.18.0.1:80 -s rr",
      "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 3",
      "-a -t 198.18.0.1:80 -r 198.18.1.2:8080 -g -w 0 -x 100 -y 10",
      "-a -t 198.18.0.1:80 -r 198.18.1.3:80 -i --tun-type gue --tun-port 6080 --tun-remcsum",
      "-a -t 198.18.0.1:80 -r 198.18.1.4:80 -i --tun-type gre --tun-csum",
      "-A -u [2001:db8::1]:53 -s sh -b sh-port -p 120 -M 64",
      "-a -u [2001:db8::1]:53 -r [2001:db8:1::1]:53 -m",
      "-A -f 7 -s mh -b mh-fallback -p 60 -M 255.255.255.0",
      "-a -f 7 -r 198.18.1.5:0 -g",
      "-A -f 8 -6 -s wlc",
      "-A -u 198.18.0.2:514 -s rr -o",
      "--set 100 20 30"],
     lambda b: (b.add_service(WEB),
                b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ, weight=3)),
                # ipvsadm gives DR/TUN dests the service's port (ipvsadm.c), so 8080 -> 80
                b.add_dest(WEB.key, dest("198.18.1.2", 80, weight=0, u_threshold=100,
                                         l_threshold=10)),
                b.add_dest(WEB.key, dest("198.18.1.3", 80, Forward.TUNNEL, tun_type=TunType.GUE,
                                         tun_port=6080, tun_flags=model.TUN_FLAG_REMCSUM)),
                b.add_dest(WEB.key, dest("198.18.1.4", 80, Forward.TUNNEL, tun_type=TunType.GRE,
                                         tun_flags=model.TUN_FLAG_CSUM)),
                b.add_service(DNS6),
                b.add_dest(DNS6.key, dest("2001:db8:1::1", 53, Forward.MASQ)),
                b.add_service(MARK),
                b.add_dest(MARK.key, dest("198.18.1.5", 0)),
                b.add_service(MARK6),
                b.add_service(OPS),
                b.set_timeouts(Timeouts(100, 20, 30))),
     None),
    ("edits and deletions",
     ["-A -t 198.18.0.1:80 -s rr",
      "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 3",
      "-a -t 198.18.0.1:80 -r 198.18.1.2:80 -m",
      "-E -t 198.18.0.1:80 -s wrr -p 30",
      "-e -t 198.18.0.1:80 -r 198.18.1.1:80 -g -w 5 -x 7 -y 1",
      "-d -t 198.18.0.1:80 -r 198.18.1.2:80",
      "-A -f 7 -s mh -b mh-fallback -p 60 -M 255.255.255.0",
      "-D -f 7"],
     lambda b: (b.add_service(WEB),
                b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ, weight=3)),
                b.add_dest(WEB.key, dest("198.18.1.2", 80, Forward.MASQ)),
                b.edit_service(Service(af=WEB.af, protocol=WEB.protocol, addr=WEB.addr,
                                       port=WEB.port, scheduler="wrr",
                                       flags=model.SVC_F_PERSISTENT, timeout=30)),
                b.edit_dest(WEB.key, dest("198.18.1.1", 80, weight=5, u_threshold=7,
                                          l_threshold=1)),
                b.del_dest(WEB.key, dest("198.18.1.2", 80)),
                b.add_service(MARK),
                b.del_service(MARK.key)),
     None),
    ("duplicate service", ["-A -t 198.18.0.1:80 -s rr", "-A -t 198.18.0.1:80 -s rr"],
     lambda b: (b.add_service(WEB), b.add_service(WEB)), errno.EEXIST),
    ("duplicate dest", ["-A -t 198.18.0.1:80 -s rr", "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m",
                        "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m"],
     lambda b: (b.add_service(WEB), b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ)),
                b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ))), errno.EEXIST),
    ("unknown scheduler", ["-A -t 198.18.0.1:80 -s nosuch"],
     lambda b: (b.add_service(Service(af=WEB.af, protocol=WEB.protocol, addr=WEB.addr,
                                      port=WEB.port, scheduler="nosuch")),), errno.ENOENT),
    ("edit missing service", ["-E -t 198.18.0.1:80 -s rr"],
     lambda b: (b.edit_service(WEB),), errno.ESRCH),
    ("delete missing service", ["-D -t 198.18.0.1:80"],
     lambda b: (b.del_service(WEB.key),), errno.ESRCH),
    ("dest of missing service", ["-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m"],
     lambda b: (b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ)),), errno.ESRCH),
    ("delete missing dest", ["-A -t 198.18.0.1:80 -s rr", "-d -t 198.18.0.1:80 -r 198.18.1.1:80"],
     lambda b: (b.add_service(WEB), b.del_dest(WEB.key, dest("198.18.1.1", 80))), errno.ENOENT),
    ("thresholds out of order", ["-A -t 198.18.0.1:80 -s rr",
                                 "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -x 5 -y 10"],
     lambda b: (b.add_service(WEB), b.add_dest(WEB.key, dest("198.18.1.1", 80, Forward.MASQ,
                                                             u_threshold=5, l_threshold=10))),
     errno.ERANGE),
]


def ipvsadm(args, check=False):
    proc = subprocess.run(["ipvsadm", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise SystemExit(f"ipvsadm {shlex.join(args)} failed: {proc.stderr}")
    return proc


def reset():
    ipvsadm(["-C"], check=True)
    ipvsadm(["--set", "900", "120", "300"], check=True)


def listings():
    return [ipvsadm(args).stdout for args in LISTINGS]


def check_batch_rollback(backend) -> dict:
    """A batch refused at its last operation leaves the table exactly as it was."""
    from lvsuser.backends.base import BatchFailed

    reset()
    for line in ["-A -t 198.18.0.1:80 -s rr", "-a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 3",
                 "-a -t 198.18.0.1:80 -r 198.18.1.2:80 -g -x 9 -y 2",
                 "-a -t 198.18.0.1:80 -r 198.18.1.3:80 -m", "-A -f 7 -s wlc -p 60"]:
        ipvsadm(shlex.split(line), check=True)
    before = listings() + [ipvsadm(["-Ln", "--nosort", "-t", "198.18.0.1:80"]).stdout]
    batch = [
        ("edit_dest", {"key": WEB.key, "dest": dest("198.18.1.1", 80, weight=9)}),
        ("del_dest", {"key": WEB.key, "dest": dest("198.18.1.2", 80)}),
        ("set_timeouts", {"timeouts": Timeouts(10, 10, 10)}),
        ("edit_service", {"svc": Service(af=WEB.af, protocol=WEB.protocol, addr=WEB.addr,
                                         port=WEB.port, scheduler="wlc")}),
        ("add_service", {"svc": OPS}),
        ("flush", {}),
        ("add_service", {"svc": MARK}),
        ("add_service", {"svc": MARK}),  # refused: EEXIST
    ]
    failed = None
    try:
        backend.apply_batch(batch)
    except BatchFailed as exc:
        failed = [exc.index, exc.errno]
    after = listings() + [ipvsadm(["-Ln", "--nosort", "-t", "198.18.0.1:80"]).stdout]
    return {"failed": failed, "before": before, "after": after}


def check_sync_daemon(backend) -> dict:
    """Start/list/stop the sync daemon through the backend, beside ipvsadm doing the same."""
    from lvsuser.model import SyncDaemon

    ipvsadm(["--start-daemon", "backup", "--mcast-interface", "lo", "--syncid", "9"], check=True)
    by_ipvsadm = ipvsadm(["-L", "--daemon"]).stdout
    ipvsadm(["--stop-daemon", "backup"], check=True)
    backend.start_daemon(SyncDaemon(state="backup", mcast_ifn="lo", syncid=9))
    by_backend = ipvsadm(["-L", "--daemon"]).stdout
    listed = [(d.state, d.mcast_ifn, d.syncid) for d in backend.get_daemons()]
    backend.stop_daemon("backup")
    return {"by_ipvsadm": by_ipvsadm, "by_backend": by_backend, "listed": listed,
            "after_stop": ipvsadm(["-L", "--daemon"]).stdout}


def main() -> int:
    backend = IPVSBackend()
    report = {"info": backend.get_info(), "cases": []}
    for name, lines, calls, expected_errno in CASES:
        reset()
        ipvsadm_rcs = [ipvsadm(shlex.split(line)).returncode for line in lines]
        by_ipvsadm = listings()
        reset()
        raised = None
        try:
            calls(backend)
        except IPVSError as exc:
            raised = exc.errno
        by_backend = listings()
        services = backend.get_services()
        report["cases"].append({
            "name": name, "ipvsadm_rcs": ipvsadm_rcs, "by_ipvsadm": by_ipvsadm,
            "by_backend": by_backend, "raised": raised, "expected_errno": expected_errno,
            "services_read_back": len(services),
            "dests_read_back": sum(len(s.dests) for s in services),
        })
    report["batch"] = check_batch_rollback(backend)
    report["daemon"] = check_sync_daemon(backend)
    reset()
    report["timeouts_default"] = vars(backend.get_timeouts())
    report["get_service_missing"] = backend.get_service(
        ServiceKey(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=ip("198.18.0.99"), port=1))
    backend.close()
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
