"""The benchmark's quick mode end to end, in namespaces it builds itself.

What is checked is that the benchmark works and reports honestly, never how fast anything is:
the reports are written, the baselines delivered packets and served connections, every
candidate has either numbers or a reason, and no namespace is left behind (also after Ctrl-C).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lvsuser.lab import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("trafgen", "wrk", "nginx", "nft")),
                       reason="trafgen, wrk, nginx and nft are needed (bash tools/setup.sh)"),
]


def _namespaces_of(pid: int) -> list[str]:
    # lvsuser.lab.netns names are PREFIX + role + pid + 'n' + counter
    return [name for name in netns.list_netns()
            if name.startswith("lvsb") and f"{pid}n" in name]


def test_quick_mode_writes_a_sane_report(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--guest", "no",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert not _namespaces_of(proc.pid), "namespaces left behind"
    for kind in ("json", "md", "png"):
        assert (out / f"report.{kind}").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    candidates = report["candidates"]
    assert {"forward", "nft-dnat", "lvsuser-nat-afpacket", "lvsuser-dr-afpacket",
            "lvsuser-tun-afpacket", "lvsuser-nat-tun"} <= set(candidates)

    # The two kernel baselines always run on this machine; their numbers must be real.
    for name in ("forward", "nft-dnat"):
        cand = candidates[name]
        assert cand["available"], cand["reason"]
        assert len(cand["runs"]["udp_flows_pps"]) == report["meta"]["rounds"]
        for detail in cand["details"]["udp_flows_pps"] + cand["details"]["udp_newflows_pps"]:
            # Both real servers received traffic: round robin reached each one.
            assert all(count > 0 for count in detail["delivered"].values()), detail
            # Nothing is delivered that was not sent (windows differ slightly per counter).
            assert detail["delivered_pps"] <= detail["offered_pps"] * 1.1 + 1000, detail
        assert cand["medians"]["tcp_conn_per_s"] > 0
        assert 0 < cand["medians"]["http_p50_us"] <= cand["medians"]["http_p99_us"]

    # Every other candidate ran and delivered, or says why it could not.
    for cand in candidates.values():
        if cand["available"]:
            assert cand["runs"], f"{cand['name']} available but measured nothing"
            for values in cand["runs"].values():
                assert all(v >= 0 for v in values)
            assert all(v > 0 for v in cand["runs"].get("udp_flows_pps", [1])), cand
        else:
            assert cand["reason"].strip(), f"{cand['name']} unavailable without a reason"

    markdown = (out / "report.md").read_text()
    assert "| kernel forwarding (ceiling) |" in markdown
    assert "Ratios to **nftables DNAT rr**" in markdown
    for cand in candidates.values():
        if not cand["available"] and not cand["runs"]:
            assert f"not available: {cand['reason']}" in markdown
    assert [t["status"] for t in report["targets"] if t.get("status")]


def test_interrupt_removes_everything(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--guest", "no",
                             "--only", "forward", "--metrics", "udp_flows_pps", "--rounds", "5",
                             "--out", str(tmp_path / "r")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(_namespaces_of(proc.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_namespaces_of(proc.pid)) == 4, "topology never came up"
        time.sleep(1.0)  # inside a measurement, with trafgen and nginx running
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in _namespaces_of(proc.pid):  # never leave ours behind, even when failing
            netns.remove(name)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert not _namespaces_of(proc.pid)
    assert not (tmp_path / "r" / "report.json").exists()
