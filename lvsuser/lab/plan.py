"""The guide's three labs as data: hosts, wires, addresses (ours beside the guide's), commands.

Addresses follow one rule so that the guide stays readable next to the lab: the guide's
host-only network 192.168.137.0/24 becomes 198.18.137.0/24 and its bridged network
172.20.10.0/24 becomes 198.19.10.0/24, last octets kept (both inside 198.18.0.0/15, the
benchmarking range, so nothing here can collide with a real network).

Nothing in this module touches the system; `build.py` turns a plan into namespaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GUIDE_LAN = "192.168.137"
LAB_LAN = "198.18.137"
GUIDE_OUTSIDE = "172.20.10"
LAB_OUTSIDE = "198.19.10"
HTTP_PORT = 80

MODES = ("nat", "tun", "dr")
ROLES = ("client", "director", "rs1", "rs2")


@dataclass(frozen=True)
class Interface:
    name: str                 # inside the host's namespace
    network: str              # which wire it plugs into ("lan" or "outside")
    address: str              # our address
    prefixlen: int
    guide_address: str        # the guide's address for the same interface
    mac: str                  # fixed, so the path printout can name every MAC


@dataclass(frozen=True)
class Host:
    role: str
    interfaces: tuple[Interface, ...]
    guide_name: str = ""      # the guide's host name (lvs-nat, r1-nat, ...)

    def interface(self, name: str) -> Interface:
        return next(i for i in self.interfaces if i.name == name)


@dataclass(frozen=True)
class Plan:
    mode: str
    title: str
    vip: str
    guide_vip: str
    vip_on_director: str | None   # label carrying the VIP on the director (guide: eth0:0), if any
    port: int                     # the virtual service port
    rs_port: int                  # port the real servers listen on
    hosts: tuple[Host, ...]
    networks: tuple[str, ...]     # wires; "lan" is a bridge, others are point-to-point veths
    ipvsadm: tuple[tuple[str, ...], ...]
    realserver_args: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def host(self, role: str) -> Host:
        return next(h for h in self.hosts if h.role == role)

    @property
    def real_servers(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role.startswith("rs"))

    def owner_of_mac(self) -> dict[str, str]:
        """MAC -> 'host' for the printout."""
        return {i.mac: h.role for h in self.hosts for i in h.interfaces}

    def role_of_address(self) -> dict[str, str]:
        names = {i.address: h.role for h in self.hosts for i in h.interfaces}
        names[self.vip] = "VIP"
        return names


def _mac(host_number: int, interface_number: int) -> str:
    # locally administered (02:...), host and interface readable in the last two bytes
    return f"02:00:00:00:{host_number:02x}:{interface_number:02x}"


def _lan(last_octet: int, host_number: int, name: str = "eth0", interface_number: int = 0,
         guide: str | None = None) -> Interface:
    return Interface(name, "lan", f"{LAB_LAN}.{last_octet}", 24,
                     guide or f"{GUIDE_LAN}.{last_octet}", _mac(host_number, interface_number))


def nat_plan() -> Plan:
    vip = f"{LAB_OUTSIDE}.3"
    dip = f"{LAB_LAN}.44"
    hosts = (
        Host("client", (Interface("eth0", "outside", f"{LAB_OUTSIDE}.2", 24,
                                  f"{GUIDE_OUTSIDE}.x (the Windows host)", _mac(1, 0)),),
             guide_name="the Windows host"),
        Host("director", (Interface("eth0", "outside", vip, 24, f"{GUIDE_OUTSIDE}.3 (VIP)",
                                    _mac(2, 0)),
                          _lan(44, 2, "eth1", 1)), guide_name="lvs-nat"),
        Host("rs1", (_lan(53, 3),), guide_name="r1-nat"),
        Host("rs2", (_lan(54, 4),), guide_name="r2-nat"),
    )
    service = f"{vip}:{HTTP_PORT}"
    return Plan(
        mode="nat", title="LVS-NAT", vip=vip, guide_vip=f"{GUIDE_OUTSIDE}.3",
        vip_on_director=None, port=HTTP_PORT, rs_port=8080, hosts=hosts,
        networks=("outside", "lan"),
        ipvsadm=(("-A", "-t", service, "-s", "rr"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.53:8080", "-m"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.54:8080", "-m")),
        realserver_args=("nat", "--director", dip),
        notes=("the VIP is the director's outside address, as in the guide; real servers listen "
               "on 8080 and the director rewrites VIP:80 <-> RIP:8080",))


def dr_plan() -> Plan:
    vip = f"{LAB_LAN}.66"
    hosts = (
        Host("client", (_lan(1, 1, guide=f"{GUIDE_LAN}.x (the Windows host)"),),
             guide_name="the Windows host"),
        Host("director", (_lan(59, 2),), guide_name="lvs-dr"),
        Host("rs1", (_lan(63, 3),), guide_name="r1-dr"),
        Host("rs2", (_lan(64, 4),), guide_name="r2-dr"),
    )
    service = f"{vip}:{HTTP_PORT}"
    return Plan(
        mode="dr", title="LVS-DR", vip=vip, guide_vip=f"{GUIDE_LAN}.66", vip_on_director="eth0:0",
        port=HTTP_PORT, rs_port=HTTP_PORT, hosts=hosts, networks=("lan",),
        ipvsadm=(("-A", "-t", service, "-s", "rr"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.63", "-g"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.64", "-g")),
        realserver_args=("dr", "--vip", vip))


def tun_plan() -> Plan:
    vip = f"{LAB_LAN}.65"
    hosts = (
        Host("client", (_lan(1, 1, guide=f"{GUIDE_LAN}.x (the Windows host)"),),
             guide_name="the Windows host"),
        Host("director", (_lan(60, 2),), guide_name="lvs-tun"),
        Host("rs1", (_lan(61, 3),), guide_name="r1-tun"),
        Host("rs2", (_lan(62, 4),), guide_name="r2-tun"),
    )
    service = f"{vip}:{HTTP_PORT}"
    return Plan(
        mode="tun", title="LVS-TUN", vip=vip, guide_vip=f"{GUIDE_LAN}.65",
        vip_on_director="eth0:0", port=HTTP_PORT, rs_port=HTTP_PORT, hosts=hosts,
        networks=("lan",),
        ipvsadm=(("-A", "-t", service, "-s", "rr"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.61", "-i"),
                 ("-a", "-t", service, "-r", f"{LAB_LAN}.62", "-i")),
        realserver_args=("tun", "--vip", vip),
        notes=("we use -i (IPIP tunnel) where the guide used -g \"because -i did not work\": with "
               "-g its real servers, on the same LAN, simply got DR; -i most likely failed because "
               "the guide never turns rp_filter off on the real servers, so they dropped the "
               "decapsulated packets. `lvsuser realserver tun` sets rp_filter=0.",
               "the guide puts the VIP on the director's tunl0; the director needs no tunnel "
               "device to send IPIP (lvsuser encapsulates), so the VIP goes on eth0:0 as in DR"))


def plan_for(mode: str) -> Plan:
    try:
        return {"nat": nat_plan, "dr": dr_plan, "tun": tun_plan}[mode]()
    except KeyError:
        raise ValueError(f"unknown lab mode {mode!r}: use nat, tun or dr") from None
