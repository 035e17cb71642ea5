"""The oracle runner itself: it boots a kernel with IPVS, returns output and exit codes, and enforces
its timeout."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.kernel.conftest import load_ipvs_vm


def test_guest_has_kernel_ipvs(guest):
    result = guest.run(
        "uname -r\n"
        "ipvsadm -Ln\n"
        "echo ipvsadm-rc=$?\n"
        "lsmod | grep '^ip_vs '\n"
        "touch /tmp/x /root/x /run/x && echo writable\n"
        "echo to-stderr >&2\n"
        "cat $VMJOB/extra.txt\n"
        "exit 7\n",
        timeout=120, files={"extra.txt": "carried in\n"})
    lines = result.stdout.splitlines()
    assert result.rc == 7
    assert lines[0] != os.uname().release  # a different kernel than the host's
    assert lines[1:4] == [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    ]
    assert lines[4] == "ipvsadm-rc=0"
    assert lines[5].startswith("ip_vs ")
    assert lines[6:] == ["writable", "carried in"]
    assert result.stderr == "to-stderr\n"


def test_guest_timeout_kills_qemu(ipvs_vm, monkeypatch):
    job_dirs = []
    real_mkdtemp = ipvs_vm.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        job_dirs.append(real_mkdtemp(*args, **kwargs))
        return job_dirs[-1]

    monkeypatch.setattr(ipvs_vm.tempfile, "mkdtemp", recording_mkdtemp)
    with pytest.raises(ipvs_vm.GuestTimeout):
        ipvs_vm.run_in_guest("sleep 600", timeout=4)
    assert len(job_dirs) == 1
    # The qemu of this run is gone (no process names its job directory) and so is the directory.
    leftovers = subprocess.run(["pgrep", "-af", job_dirs[0]], capture_output=True, text=True)
    assert leftovers.stdout == ""
    assert not os.path.exists(job_dirs[0])


def test_cpio_writer_round_trips_through_cpio_tool(tmp_path):
    vm = load_ipvs_vm()
    writer = vm.CpioWriter()
    writer.directory("d")
    writer.file("d/hello", b"hello world\n", 0o755)
    writer.file("odd", b"x" * 5)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(writer.finish())
    if shutil.which("cpio") is None:
        pytest.skip("the cpio tool is missing (only this cross-check needs it)")
    listing = subprocess.run(["cpio", "-t", "-v", "-F", str(archive)], capture_output=True, text=True)
    assert [line.split()[-1] for line in listing.stdout.splitlines()] == ["d", "d/hello", "odd"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-i", "-d", "-F", str(archive)], cwd=out, check=True, capture_output=True)
    assert (out / "d" / "hello").read_bytes() == b"hello world\n"
    assert os.stat(out / "d" / "hello").st_mode & 0o777 == 0o755
    assert (out / "odd").read_bytes() == b"xxxxx"


def test_module_order_puts_dependencies_first(ipvs_vm):
    kernel = ipvs_vm.find_kernel()
    order = [os.path.basename(p) for p in ipvs_vm._module_load_order(kernel.modules_dir,
                                                                     ipvs_vm.BOOT_MODULES)]
    names = [n.split(".ko")[0] for n in order]
    assert names.index("9pnet") < names.index("9pnet_virtio") < names.index("9p")
    assert names.index("virtio") < names.index("virtio_pci")
