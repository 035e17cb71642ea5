"""Options of the AF_PACKET driver that can be checked without root or namespaces."""
from __future__ import annotations

import pytest

from lvsuser import _fastpath as fastpath
from lvsuser.backends import userspace
from lvsuser.backends.base import BackendUnavailable


def test_busy_poll_from_environment(monkeypatch):
    monkeypatch.delenv(userspace.AFPACKET_BUSY_POLL_ENV, raising=False)
    assert userspace.afpacket_busy_poll_us() == userspace.AFPACKET_BUSY_POLL_DEFAULT
    monkeypatch.setenv(userspace.AFPACKET_BUSY_POLL_ENV, "0")
    assert userspace.afpacket_busy_poll_us() == 0
    monkeypatch.setenv(userspace.AFPACKET_BUSY_POLL_ENV, " 75 ")
    assert userspace.afpacket_busy_poll_us() == 75
    for bad in ("-1", "10001", "fast", "1.5"):
        monkeypatch.setenv(userspace.AFPACKET_BUSY_POLL_ENV, bad)
        with pytest.raises(BackendUnavailable, match=userspace.AFPACKET_BUSY_POLL_ENV):
            userspace.afpacket_busy_poll_us()


def test_driver_refuses_busy_poll_out_of_range():
    # checked before any socket is opened, so no root is needed
    for bad in (-1, 10001):
        with pytest.raises(ValueError, match="busy_poll_us"):
            fastpath.AfPacketDriver(object(), [(1, 1500)], None, "ring", bad)
