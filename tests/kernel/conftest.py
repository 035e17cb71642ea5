"""Fixtures for the kernel-IPVS oracle: tests here run commands in a QEMU guest (tools/ipvs_vm.py).

Each guest boot costs several seconds of both cores, so tests batch their checks into one script.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reuse_or_run(request, key: str, produce):
    """PRODUCE()'s result (a guest boot's), kept in pytest's cache under KEY.
    LVSUSER_KERNEL_REUSE=1 reuses the last one, for working on comparisons without booting again."""
    if os.environ.get("LVSUSER_KERNEL_REUSE") == "1":
        cached = request.config.cache.get(key, None)
        if cached is not None:
            return cached
    value = produce()
    request.config.cache.set(key, value)
    return value


def load_ipvs_vm():
    """tools/ is not a package: load tools/ipvs_vm.py by path (once)."""
    if "lvsuser_tools_ipvs_vm" in sys.modules:
        return sys.modules["lvsuser_tools_ipvs_vm"]
    spec = importlib.util.spec_from_file_location("lvsuser_tools_ipvs_vm",
                                                  os.path.join(REPO, "tools", "ipvs_vm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Guest:
    """Runs scripts in a fresh guest boot each; the repository is at REPO inside as outside."""

    def __init__(self, ipvs_vm):
        self.vm = ipvs_vm
        self.repo = REPO

    def run(self, script: str, timeout: float = 240, files: dict | None = None):
        return self.vm.run_in_guest(script, timeout=timeout, files=files)

    def run_python(self, code: str, timeout: float = 240, files: dict | None = None):
        """Run Python source in the guest with the repository as cwd and on sys.path."""
        files = dict(files or {})
        files["guest_main.py"] = code
        script = (f"cd {REPO} && PYTHONPATH={REPO} exec python3 $VMJOB/guest_main.py")
        return self.run(script, timeout=timeout, files=files)


@pytest.fixture(scope="session")
def ipvs_vm():
    if os.geteuid() != 0:
        pytest.skip("the kernel oracle needs root (qemu reads /boot and exports / over 9p)")
    vm = load_ipvs_vm()
    missing = vm.check_available()
    if missing:
        pytest.skip(f"kernel oracle unavailable: {missing}")
    return vm


@pytest.fixture(scope="session")
def guest(ipvs_vm):
    return Guest(ipvs_vm)
