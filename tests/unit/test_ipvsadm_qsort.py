"""Listing order: ipvsadm's comparison (with its 32-bit wrap) sorted as the C library's qsort.

libipvs compares addresses by subtracting them as unsigned ints into an int, which is not a
consistent order (10.0.0.1 < 100.0.0.1 < 200.0.0.1 < 10.0.0.1), so the result depends on the
sorting algorithm.  ``glibc_qsort`` must agree with the real qsort called through ctypes.
"""
import ctypes
import ctypes.util
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvsuser import model
from lvsuser.control.ipvsadm.qsort import compare_services, glibc_qsort

LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
COMPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))


def libc_qsort(items, compare):
    indices = (ctypes.c_int * len(items))(*range(len(items)))

    def by_index(a, b):
        return compare(items[a[0]], items[b[0]])

    callback = COMPARE(by_index)
    LIBC.qsort(indices, len(items), ctypes.sizeof(ctypes.c_int), callback)
    return [items[i] for i in indices]


def service(addr, port=80, protocol=model.IPPROTO_TCP, fwmark=0):
    ip = ipaddress.ip_address(addr)
    return model.Service(af=model.af_of(ip), protocol=protocol, addr=ip, port=port, fwmark=fwmark)


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="no C library to compare with")
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.0.0.1", "100.0.0.1", "200.0.0.1", "198.18.0.1",
                                           "127.0.0.1", "255.255.255.254", "2001:db8::1",
                                           "2001:db8::ffff:1", "fe80::1"]),
                          st.integers(0, 65535), st.sampled_from([6, 17]),
                          st.sampled_from([0, 0, 0, 1, 0xFFFFFFFF])),
                max_size=12, unique=True))
def test_service_order_matches_the_c_library(specs):
    services = [service(a, p, proto, mark) for a, p, proto, mark in specs]
    assert glibc_qsort(services, compare_services) == \
        libc_qsort(services, compare_services)


def test_the_comparison_is_not_an_order():
    a, b, c = service("10.0.0.1"), service("100.0.0.1"), service("200.0.0.1")
    cmp = compare_services
    assert cmp(a, b) < 0 and cmp(b, c) < 0 and cmp(c, a) < 0
