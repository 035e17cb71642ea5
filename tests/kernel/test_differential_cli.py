"""Differential suite: every ipvsadm scenario through the real ipvsadm on kernel IPVS and through
`lvsuser ipvsadm` against `lvsuser run --backend userspace`, both in the same guest (one boot).

Any difference fails, naming the first divergent command; lvsuser's deliberate differences are the
ones tests/unit/test_ipvsadm_refs.py documents (tests/kernel/differential.py reuses them).
"""
from __future__ import annotations

import json
import shlex

import pytest

from tests.kernel import differential
from tests.kernel.conftest import REPO, reuse_or_run

CACHE_KEY = "lvsuser/kernel/differential_cli_run"


@pytest.fixture(scope="module")
def userspace_run(request, guest):
    def boot():
        scenarios = " ".join(shlex.quote(n) for n in differential.scenario_names())
        # The userspace director needs an Ethernet interface to serve: a veth pair in a namespace of
        # the guest's own (the guest is a VM with no network; these addresses never leave it).
        script = (f"cd {REPO} && export PYTHONPATH={REPO}\n"
                  "ip netns add lvd && ip -n lvd link set lo up\n"
                  "ip -n lvd link add lvd0 type veth peer name lvd1 || exit 20\n"
                  "ip -n lvd link set lvd0 up && ip -n lvd link set lvd1 up\n"
                  "ip -n lvd addr add 198.18.5.1/24 dev lvd0\n"
                  "exec python3 tests/kernel/guest_differential.py --backend userspace --netns lvd "
                  f"{scenarios}\n")
        result = guest.run(script, timeout=1500)
        assert result.rc == 0, f"guest run failed ({result.rc}):\n{result.stderr[-4000:]}"
        return json.loads(result.stdout)

    return reuse_or_run(request, CACHE_KEY, boot)


def test_director_ran_and_stopped_cleanly(userspace_run):
    assert userspace_run["backend"] == "userspace"
    assert userspace_run["director_rc"] == 0, userspace_run["director_log"]
    stdout, stderr, rc = userspace_run["console_ipvsadm"]
    assert (rc, stderr) == (0, "")
    assert stdout.startswith("IP Virtual Server version 1.2.1 (size=4096)\n")


@pytest.mark.parametrize("name", differential.scenario_names())
def test_userspace_outputs_match_kernel_ipvsadm(userspace_run, name):
    scenario = userspace_run["scenarios"][name]
    divergence = differential.first_output_divergence(name, scenario)
    assert divergence is None, divergence
