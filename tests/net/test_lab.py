"""`lvsuser lab nat|tun|dr` run as a user runs it: a subprocess, checked by its printout, by the
raw captures it saves (decoded here with scapy, independently of lab/trace.py), and by what it
leaves behind (nothing), also after SIGINT mid-run and after --keep / `lab down`."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from lvsuser.lab import netns
from lvsuser.lab.plan import plan_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Without PYTHONUNBUFFERED (set on some dev machines, not in CI): the lab must flush by itself.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": REPO}


def lab_namespaces(pid: int) -> list[str]:
    return [n for n in netns.list_netns() if n.endswith(f"-{pid}") and n.startswith("lvs")]


def run_lab(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvsuser", "lab", *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def answers_from(stdout: str) -> dict[int, str]:
    return {int(n): rs for n, rs in re.findall(r"^\s+(\d+)\s+-> (rs\d)\s", stdout, re.M)}


def load_frames(directory, role):
    frames = []
    with open(os.path.join(directory, f"capture-{role}.jsonl")) as f:
        for line in f:
            item = json.loads(line)
            raw = bytes.fromhex(item["hex"])
            packet = Ether(raw) if item["link"] == "ether" else IP(raw)
            frames.append((item["if"], item["dir"], packet))
    return frames


def first_request_rs(stdout: str) -> tuple[int, str]:
    match = re.search(r"packet path of request \d+ \(client port (\d+), answered by (rs\d)\)", stdout)
    assert match, stdout
    return int(match.group(1)), match.group(2)


@pytest.mark.parametrize("mode", ["nat", "tun", "dr"])
def test_lab_mode_end_to_end(mode, tmp_path):
    plan = plan_for(mode)
    result = run_lab(mode, "--captures", str(tmp_path))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    answers = answers_from(out)
    assert sorted(answers) == [1, 2, 3, 4]
    assert set(answers.values()) == {"rs1", "rs2"}
    assert "both real servers answered" in out
    assert "cleaned up" in out

    port, rs = first_request_rs(out)
    rs_host = plan.host(rs)
    rip = rs_host.interfaces[0].address
    rs_mac = rs_host.interfaces[0].mac
    director = plan.host("director")

    # what the director sent for the first request: frames entering the switch from the
    # director's ports, decoded here from the raw capture
    sent = [(ifname, packet) for ifname, direction, packet in load_frames(tmp_path, "switch")
            if ifname.startswith("director-") and direction == "in" and packet.haslayer(TCP)
            and packet[TCP].sport == port and int(packet[TCP].flags) & 0x12 == 0x02]
    assert sent, "the director's capture holds no forwarded SYN of the first request"
    ifname, packet = sent[0]
    assert packet[Ether].dst == rs_mac
    if mode == "nat":
        assert packet[IP].dst == rip and packet[TCP].dport == 8080
        assert f"NAT: destination rewritten {plan.vip}:80 -> {rip}:8080 ({rs})" in out
        assert f"source rewritten {rip}:8080 -> {plan.vip}:80" in out
    elif mode == "dr":
        assert packet[IP].dst == plan.vip and packet[IP].proto == 6
        assert f"DR: IP header unchanged, destination MAC is now {rs_mac} ({rs})" in out
    else:
        outer = packet[IP]
        assert (outer.src, outer.dst, outer.proto) == (director.interfaces[0].address, rip, 4)
        assert outer.payload[IP].dst == plan.vip
        assert f"IP {outer.src} > {rip}: IPIP (proto 4)" in out
        assert "decapsulated" in out
        # and the real server's TUN device got the inner packet
        inner = [p for i, d, p in load_frames(tmp_path, rs) if i == "lvtun0" and p.haslayer(TCP)
                 and p[TCP].sport == port]
        assert inner and inner[0][IP].dst == plan.vip
    assert not lab_namespaces_of_output(out)


def lab_namespaces_of_output(out: str) -> list[str]:
    """Namespaces named in the printout that still exist."""
    names = set(re.findall(r"\b(lvs(?:nat|tun|dr)-\w+-\d+)\b", out))
    return [n for n in names if netns.exists(n)]


def read_lines_until(proc: subprocess.Popen, marker: str, seconds: float) -> str:
    """Raw reads of the child's stdout (no Python buffering between select and the text) until
    `marker` shows up, the child exits, or time runs out."""
    seen = b""
    deadline = time.monotonic() + seconds
    fd = proc.stdout.fileno()
    while marker.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_lab_prints_as_it_goes():
    """The header comes out before traffic is sent, also into a pipe (line-buffered printout)."""
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "lab", "nat"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        seen = read_lines_until(proc, "real servers (guide step 3)", 30)
        assert "real servers (guide step 3)" in seen
        assert proc.poll() is None, "the header only arrived when the lab had already finished"
        assert "cleaned up" not in seen
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert lab_namespaces(proc.pid) == []


def test_lab_sigint_mid_run_leaves_nothing():
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "lab", "nat"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_lines_until(proc, "VIP", 30)  # the director exists by the time it is named
        assert proc.poll() is None, "the lab finished before it could be interrupted:\n" + seen
        assert lab_namespaces(proc.pid), "the lab should have built its namespaces by now"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    assert proc.returncode == 130, seen + out + err
    assert "interrupted" in err
    assert lab_namespaces(proc.pid) == []
    assert not os.path.exists(f"/run/lvsuser/lab/nat{proc.pid}")


def test_lab_down_removes_what_a_killed_lab_left():
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "lab", "tun"], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        seen = read_lines_until(proc, "real servers", 30)
        assert proc.poll() is None, "the lab finished before it could be killed:\n" + seen
        proc.kill()  # no chance to clean up
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = lab_namespaces(proc.pid)
    assert left, "a SIGKILLed lab leaves its namespaces (that is what `lab down` is for)"
    down = run_lab("down")
    assert down.returncode == 0 and f"tun{proc.pid}" in down.stdout
    assert lab_namespaces(proc.pid) == []
    assert not os.path.exists(f"/run/lvsuser/lab/tun{proc.pid}")


def test_lab_keep_then_down():
    result = run_lab("dr", "--keep", "--requests", "2")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        kept = re.findall(r"ip netns exec (\S+) bash", result.stdout)
        assert len(kept) == 4 and all(netns.exists(n) for n in kept)
        # the kept lab still serves
        client = kept[0]
        answer = netns.run(client, ["curl", "-s", "-m", "3", f"http://{plan_for('dr').vip}/"])
        assert answer.stdout.strip() in ("rs1", "rs2")
    finally:
        down = run_lab("down")
    assert down.returncode == 0 and "removed" in down.stdout
    assert not any(netns.exists(n) for n in kept)
    assert run_lab("down").stdout.strip() == "no kept labs"


def test_lab_broken_arp_shows_the_leak_and_the_fix():
    result = run_lab("dr", "--broken", "arp")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "ARP would leak the VIP" in out
    broken, fixed = out.split("=== fixed")
    # broken: real servers answer ARP for the VIP
    assert re.search(r"ARP, Reply 198\.18\.137\.66 is-at \S+ \(rs\d\)", broken)
    # fixed: only the director answers, and both real servers serve through it
    replies = re.findall(r"ARP, Reply 198\.18\.137\.66 is-at \S+ \((\w+)\)", fixed)
    assert replies and set(replies) == {"director"}
    assert "both real servers answered" in fixed


def test_lab_bad_arguments():
    assert run_lab("nat", "--broken", "arp").returncode == 2
    assert run_lab("nat", "--requests", "0").returncode == 2
    assert run_lab("down", "nosuchlab").returncode == 1
