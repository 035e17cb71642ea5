"""One lvsuser director per network namespace.

Theory of operation
-------------------
Two user-space directors in one namespace would both read every frame from their rings, both
answer ARP for the VIPs and fight over one kernel (guard tables, policy rules): all traffic
fails.  Kernel IPVS has one table per namespace; we make the second director refuse to start.

A namespace is identified by its nsfs inode and device (``stat /proc/self/ns/net``), stable for
its whole life and the same from every process in it.  The claim is an exclusive ``flock`` on
``/run/lvsuser/netns/<dev>_<ino>.lock``, which holds the claimant's control socket and pid as
one JSON line so that a refused director can say whom it met.  The kernel drops a flock when
its last descriptor closes, so the claim dies with the process, SIGKILL included, and the next
director takes the file over.

The file is removed on a clean release.  Removing a lock file races with a newcomer that opened
it just before, so a claimant checks after ``flock`` that the path still names the inode it
locked, and starts over if not.  A director killed with SIGKILL leaves its file behind, unlocked;
each new claimant removes such files (of any namespace) the same way: lock, unlink, close.  A
claimant that meets a lock whose recorded holder is no longer running is meeting such a sweep in
progress, and tries again shortly.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Optional

LOCK_DIR = "/run/lvsuser/netns"


class NamespaceTaken(RuntimeError):
    """Another director serves this namespace; ``control`` and ``pid`` say which (may be None)."""

    def __init__(self, control: Optional[str], pid: Optional[int]):
        self.control, self.pid = control, pid
        super().__init__(
            f"another lvsuser director serves this network namespace (control socket "
            f"{control or 'unknown'}, pid {pid if pid is not None else 'unknown'})")


def namespace_id(ns_path: str = "/proc/thread-self/ns/net") -> str:
    """``<dev>_<ino>`` of a network namespace: the calling thread's by default."""
    if not os.path.exists(ns_path):  # kernels before 3.17 have no thread-self
        ns_path = "/proc/self/ns/net"
    st = os.stat(ns_path)
    return f"{st.st_dev}_{st.st_ino}"


def lock_path(ns_id: str, lock_dir: str = LOCK_DIR) -> str:
    return os.path.join(lock_dir, f"{ns_id}.lock")


def parse_holder(text: str) -> tuple[Optional[str], Optional[int]]:
    """(control socket, pid) from a lock file's content; (None, None) parts when unreadable."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    control = data.get("control") if isinstance(data.get("control"), str) else None
    pid = data.get("pid") if isinstance(data.get("pid"), int) else None
    return control, pid


class NamespaceClaim:
    """This process's claim on its network namespace; ``release()`` (or exit) gives it up."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)  # while still locked: a newcomer notices and starts over
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1


def claim_namespace(control_path: str, lock_dir: str = LOCK_DIR,
                    ns_path: str = "/proc/thread-self/ns/net") -> NamespaceClaim:
    """Claim the calling thread's namespace for the director behind `control_path`.

    Raises NamespaceTaken if a live director holds it, OSError if the lock cannot be made."""
    os.makedirs(lock_dir, mode=0o755, exist_ok=True)
    path = lock_path(namespace_id(ns_path), lock_dir)
    for _attempt in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            with os.fdopen(fd, "r") as f:
                control, pid = parse_holder(f.read(4096))
            if pid is not None and not os.path.exists(f"/proc/{pid}") and _attempt < 50:
                time.sleep(0.02)  # a sweep holds the dead holder's file for a moment
                continue
            raise NamespaceTaken(control, pid) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released and removed it between our open and flock
            os.close(fd)
            continue
        record = json.dumps({"control": os.path.abspath(control_path), "pid": os.getpid()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        sweep_dead_claims(lock_dir, keep=path)
        return NamespaceClaim(path, fd)
    raise OSError(errno.EAGAIN, f"could not claim {path}: it keeps changing")


def sweep_dead_claims(lock_dir: str = LOCK_DIR, keep: str = "") -> list[str]:
    """Remove lock files nobody holds (left by directors killed with SIGKILL)."""
    removed = []
    try:
        names = os.listdir(lock_dir)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(lock_dir, name)
        if not name.endswith(".lock") or path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed.append(path)
        except OSError:  # held by a live director, or gone meanwhile
            pass
        finally:
            os.close(fd)
    return removed
