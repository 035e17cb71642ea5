#!/usr/bin/env python3
"""Run a shell command inside a QEMU guest that has kernel IPVS: the kernel oracle.

Theory of operation
-------------------
This host's kernel has no ip_vs module, but Debian's stock kernel (package linux-image-amd64) ships
``ip_vs*.ko``.  We boot that kernel under ``qemu-system-x86_64 -accel tcg`` (KVM hangs here) with:

* this machine's ``/`` exported read-only over virtio-9p (mount tag ``root``), so the guest runs the
  host's own ipvsadm, Python, site-packages and /work/main checkout;
* a per-run temporary directory exported *writable* (mount tag ``job``): it carries the command and
  any extra files in, and stdout, stderr and the exit code back out;
* a tiny initramfs built here once per kernel (cached under /var/cache/lvsuser-vm): static busybox,
  the virtio/9p modules in dependency order, and an ``/init`` that mounts the 9p root, puts tmpfs over
  the directories programs expect to write (/tmp, /run, /var/lib, /var/log, /var/tmp, /root),
  mounts the job share at /run/vmjob and ``switch_root``s into the host tree.  After switch_root the
  kernel's module auto-loading (``/sbin/modprobe`` from the host's kmod, modules from
  /lib/modules/<guest version>) works, so ``ipvsadm`` loads ip_vs by itself.

/root is hidden by tmpfs (it holds the host's personal files), except the directory that holds the
Python interpreter (pyenv here), which is bind-mounted back read-only so ``python3`` works in the guest.

The second stage (a shell script on the job share) runs the command with cwd /run/vmjob, writes
``stdout``, ``stderr`` and finally ``rc`` there, syncs and reboots; qemu runs with ``-no-reboot`` so a
reboot (or a kernel panic, ``panic=-1``) ends the process.  The host enforces the timeout by killing
qemu.  The kernel's console (serial) is kept for error reports.

Usage:  python3 tools/ipvs_vm.py [--timeout S] -- SHELL-COMMAND
API:    run_in_guest(script, timeout=120, files=None) -> GuestResult(rc, stdout, stderr, console)
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

CACHE_DIR = "/var/cache/lvsuser-vm"
QEMU = "qemu-system-x86_64"
GUEST_JOB_DIR = "/run/vmjob"
# Modules needed before the 9p root can be mounted; their dependencies are added from modules.dep.
BOOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
# Directories that get a fresh tmpfs in the guest (the 9p root is read-only).
WRITABLE_DIRS = ["/tmp", "/run", "/var/lib", "/var/log", "/var/tmp", "/root"]
BUSYBOX_CANDIDATES = ["/usr/bin/busybox", "/bin/busybox"]


class GuestUnavailable(Exception):
    """qemu, a Debian kernel image, its modules or static busybox is missing; str() says which."""


class GuestError(Exception):
    """The guest did not produce a result (boot failure or timeout); carries the console log."""

    def __init__(self, message: str, console: str = "", stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.console = console
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        tail = "\n".join(self.console.splitlines()[-30:])
        return f"{self.args[0]}\n--- guest console (last lines) ---\n{tail}"


class GuestTimeout(GuestError):
    pass


@dataclasses.dataclass
class GuestResult:
    rc: int
    stdout: str
    stderr: str
    console: str = ""


# --------------------------------------------------------------------------------------------
# Finding the kernel


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    version: str
    image: str
    modules_dir: str


def _version_key(version: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"[.-]", version)]


def find_kernel() -> GuestKernel:
    """The newest /boot/vmlinuz-*-amd64 whose modules (with ip_vs) are installed."""
    candidates = []
    for image in glob.glob("/boot/vmlinuz-*-amd64"):
        version = os.path.basename(image)[len("vmlinuz-"):]
        modules_dir = f"/lib/modules/{version}"
        if os.path.exists(os.path.join(modules_dir, "modules.dep")) and os.access(image, os.R_OK):
            if glob.glob(os.path.join(modules_dir, "kernel/net/netfilter/ipvs/ip_vs.ko*")):
                candidates.append(GuestKernel(version, image, modules_dir))
    if not candidates:
        raise GuestUnavailable("no Debian kernel with ip_vs modules found (install linux-image-amd64: "
                               "bash tools/setup.sh)")
    return max(candidates, key=lambda k: _version_key(k.version))


def find_busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            with open(path, "rb") as f:
                header = f.read(4096)
            # A static binary has no PT_INTERP; the cheap check is the absence of the loader path.
            if b"ld-linux" not in header:
                return path
    raise GuestUnavailable("static busybox not found (install busybox-static: bash tools/setup.sh)")


def check_available() -> Optional[str]:
    """None when the guest can run here, else one sentence saying what is missing."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (install qemu-system-x86: bash tools/setup.sh)"
    try:
        find_kernel()
        find_busybox()
    except GuestUnavailable as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------
# The initramfs


def _module_load_order(modules_dir: str, wanted: list[str]) -> list[str]:
    """Paths (relative to modules_dir) of `wanted` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    with open(os.path.join(modules_dir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", os.path.basename(path)).replace("-", "_")
            by_name[name] = path
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            # Built into this kernel (not a module): nothing to load.
            continue
        visit(by_name[name])
    return order


def _read_module(path: str) -> bytes:
    """A module's bytes, decompressed: busybox insmod takes plain .ko files."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise GuestUnavailable(f"{path} is zstd-compressed and the zstd tool is missing")
        return subprocess.run([zstd, "-dc", path], check=True, capture_output=True).stdout
    return data


class CpioWriter:
    """Writes the 'newc' cpio format the kernel unpacks as initramfs (see the kernel's
    Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header of
    13 eight-digit hex fields, the NUL-terminated name, the data, each padded to 4 bytes."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.next_inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_bytes = name.encode() + b"\0"
        fields = [self.next_inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_bytes), 0]
        self.next_inode += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.out.write(header + name_bytes)
        self.out.write(b"\0" * (-(len(header) + len(name_bytes)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


INIT_TEMPLATE = r"""#!/bin/busybox sh
# Stage 1 (initramfs): load virtio/9p, mount the host root read-only and the job share, switch_root.
/bin/busybox mkdir -p /proc /sys /dev /newroot /carry
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "lvsuser-vm: $*"; echo b > /proc/sysrq-trigger; }
for m in @MODULES@; do insmod "/modules/$m" || fail "insmod $m failed"; done
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose root /newroot \
    || fail "cannot mount the 9p root"
# Keep the Python installation that lives under /root before /root is covered by tmpfs.
for d in @CARRY@; do
    mkdir -p "/carry$d" && mount --bind "/newroot$d" "/carry$d" || fail "cannot carry $d"
done
for d in @WRITABLE@; do
    [ -d "/newroot$d" ] && { mount -t tmpfs -o mode=0755 tmpfs "/newroot$d" || fail "tmpfs $d"; }
done
chmod 1777 /newroot/tmp /newroot/var/tmp 2>/dev/null
for d in @CARRY@; do
    mkdir -p "/newroot$d" && mount --move "/carry$d" "/newroot$d" || fail "cannot restore $d"
done
mkdir -p /newroot@JOBDIR@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none job /newroot@JOBDIR@ \
    || fail "cannot mount the job share"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh @JOBDIR@/.stage2
fail "switch_root failed"
"""

# Stage 2 runs as PID 1 in the host tree; the job directory holds cmd, env and the outputs.
STAGE2_TEMPLATE = r"""#!/bin/sh
. @JOBDIR@/.env
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
ip link set lo up 2>/dev/null
hostname lvsuser-guest 2>/dev/null
cd @JOBDIR@
@SHELL@ @JOBDIR@/.cmd </dev/null >@JOBDIR@/stdout 2>@JOBDIR@/stderr
echo $? > @JOBDIR@/rc.tmp
mv @JOBDIR@/rc.tmp @JOBDIR@/rc
sync
@BUSYBOX@ reboot -f
echo b > /proc/sysrq-trigger
"""


def _carry_dirs() -> list[str]:
    """Host directories under the guest's tmpfs mounts that the guest needs back: the top-level
    entry of /root holding the interpreter, and this checkout (CI may clone it under /tmp)."""
    carried = []
    for path in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}):
        if path.startswith("/root/"):
            top = "/root/" + path[len("/root/"):].split("/")[0]
            if top not in carried:
                carried.append(top)
    checkout = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    hidden = any(checkout == d or checkout.startswith(d + "/") for d in WRITABLE_DIRS)
    if hidden and not any(checkout == c or checkout.startswith(c + "/") for c in carried):
        carried.append(checkout)
    return carried


def build_initramfs(kernel: GuestKernel) -> str:
    """Path of the cached initramfs for this kernel; built (atomically) if missing."""
    busybox = find_busybox()
    modules = _module_load_order(kernel.modules_dir, BOOT_MODULES)
    init = (INIT_TEMPLATE
            .replace("@MODULES@", " ".join(os.path.basename(m) for m in modules))
            .replace("@CARRY@", " ".join(_carry_dirs()))
            .replace("@WRITABLE@", " ".join(WRITABLE_DIRS))
            .replace("@JOBDIR@", GUEST_JOB_DIR))
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    module_bytes = [(os.path.basename(m), _read_module(os.path.join(kernel.modules_dir, m)))
                    for m in modules]
    digest = hashlib.sha256(init.encode() + busybox_bytes)
    for name, data in module_bytes:
        digest.update(name.encode() + data)
    path = os.path.join(CACHE_DIR, f"initramfs-{kernel.version}-{digest.hexdigest()[:16]}.cpio.gz")
    if os.path.exists(path):
        return path

    cpio = CpioWriter()
    for directory in ("bin", "dev", "modules", "proc", "sys", "newroot", "carry"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)  # the kernel opens it for init's stdio
    cpio.char_device("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox_bytes, 0o755)
    for name, data in module_bytes:
        # insmod wants plain names; strip compression suffixes we decompressed.
        cpio.file("modules/" + re.sub(r"\.(xz|gz|zst)$", "", name), data)
    cpio.file("init", init.encode(), 0o755)
    os.makedirs(CACHE_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, prefix=".initramfs-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(cpio.finish(), compresslevel=6))
        os.replace(tmp, path)  # parallel builders race harmlessly: same content
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Running


def _guest_path() -> str:
    """The guest's PATH: the interpreter's own bin first, then the host's PATH and the sbin dirs."""
    parts = [os.path.dirname(sys.executable)]
    parts += [p for p in os.environ.get("PATH", "").split(":") if p]
    parts += ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    seen: list[str] = []
    for p in parts:
        if p not in seen:
            seen.append(p)
    return ":".join(seen)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_in_guest(script: str, timeout: float = 120, files: Optional[dict] = None,
                 memory_mb: int = 1024) -> GuestResult:
    """Boot the guest, run `script` (a shell script, cwd = the job directory /run/vmjob, where
    `files` {name: str|bytes} are placed), return its exit code and output.

    Raises GuestUnavailable when this host cannot run the guest, GuestTimeout when the command did
    not finish within `timeout` seconds (qemu is killed), GuestError when the guest failed to boot.
    """
    missing = check_available()
    if missing:
        raise GuestUnavailable(missing)
    kernel = find_kernel()
    initramfs = build_initramfs(kernel)
    busybox = find_busybox()
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"

    job = tempfile.mkdtemp(prefix="lvsuser-vm-")
    try:
        for name, content in (files or {}).items():
            if os.path.normpath(name).startswith(("..", "/")):
                raise ValueError(f"file name must be relative to the job directory: {name!r}")
            if os.path.dirname(name):
                os.makedirs(os.path.join(job, os.path.dirname(name)), exist_ok=True)
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(os.path.join(job, name), mode) as f:
                f.write(content)
        with open(os.path.join(job, ".cmd"), "w") as f:
            f.write(script)
        env_lines = {
            "PATH": _guest_path(), "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
            "PYTHONDONTWRITEBYTECODE": "1", "LVSUSER_GUEST": "1", "VMJOB": GUEST_JOB_DIR,
        }
        with open(os.path.join(job, ".env"), "w") as f:
            for key, value in env_lines.items():
                f.write(f"export {key}={shlex.quote(value)}\n")
        with open(os.path.join(job, ".stage2"), "w") as f:
            f.write(STAGE2_TEMPLATE.replace("@JOBDIR@", GUEST_JOB_DIR)
                    .replace("@SHELL@", shell).replace("@BUSYBOX@", busybox))
        console_path = os.path.join(job, ".console")
        cmd = [
            QEMU, "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", str(memory_mb),
            "-nic", "none", "-nographic", "-no-reboot",
            "-kernel", kernel.image, "-initrd", initramfs,
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={job},mount_tag=job,security_model=none",
        ]
        with open(console_path, "wb") as console:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise GuestTimeout(f"guest command did not finish within {timeout:g} s",
                                   _read_text(console_path),
                                   _read_text(os.path.join(job, "stdout")),
                                   _read_text(os.path.join(job, "stderr")))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        console_text = _read_text(console_path)
        rc_text = _read_text(os.path.join(job, "rc")).strip()
        if not rc_text:
            raise GuestError(f"guest ended (qemu exit {proc.returncode}) without running the command",
                             console_text, _read_text(os.path.join(job, "stdout")),
                             _read_text(os.path.join(job, "stderr")))
        return GuestResult(int(rc_text), _read_text(os.path.join(job, "stdout")),
                           _read_text(os.path.join(job, "stderr")), console_text)
    finally:
        shutil.rmtree(job, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a shell command in a QEMU guest with kernel IPVS (Debian's stock kernel).",
        usage="%(prog)s [--timeout S] -- SHELL-COMMAND")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before qemu is killed")
    parser.add_argument("--console", action="store_true", help="also print the guest's console log")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    script = command[0] if len(command) == 1 else shlex.join(command)
    started = time.monotonic()
    try:
        result = run_in_guest(script, timeout=args.timeout)
    except GuestUnavailable as exc:
        print(f"ipvs_vm: {exc}", file=sys.stderr)
        return 2
    except GuestTimeout as exc:
        print(f"ipvs_vm: {exc}", file=sys.stderr)
        sys.stdout.write(exc.stdout)
        sys.stderr.write(exc.stderr)
        return 124
    except GuestError as exc:
        print(f"ipvs_vm: {exc}", file=sys.stderr)
        return 125
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if args.console:
        sys.stderr.write(result.console)
    print(f"ipvs_vm: exit {result.rc} after {time.monotonic() - started:.1f} s", file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
