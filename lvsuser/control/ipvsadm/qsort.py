"""The order of ipvsadm's listings: libipvs's comparisons through glibc's qsort.

ipvsadm sorts services and destinations with comparison functions whose address subtraction
wraps around 32 bits, through glibc's qsort -- for small arrays a top-down merge sort that keeps
the left item on ties -- so even the odd orders it produces (10.0.0.1 after 200.0.0.1) are
reproduced.  tests/unit/test_ipvsadm_qsort.py compares with the C library.
"""
from __future__ import annotations

from typing import Callable

from lvsuser.control.ipvsadm.constants import AF_INET6


def wrap_int(value: int) -> int:
    """An unsigned 32-bit difference stored into a C int."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _addr_words(addr: object | None, af: int) -> list[int]:
    if addr is None:
        return [0, 0, 0, 0] if af == AF_INET6 else [0]
    packed = addr.packed
    return [int.from_bytes(packed[i:i + 4], "big") for i in range(0, len(packed), 4)]


def _compare_addresses(af: int, a: object | None, b: object | None) -> int:
    words_a, words_b = _addr_words(a, af), _addr_words(b, af)
    if af == AF_INET6:
        words_a = (words_a + [0, 0, 0, 0])[:4]
        words_b = (words_b + [0, 0, 0, 0])[:4]
        result = 0
        for i in range(4):
            result = wrap_int(words_a[i] - words_b[i])
            if result:
                break
        return result
    return wrap_int(words_a[0] - words_b[0])


def compare_services(s1: object, s2: object) -> int:
    """libipvs ipvs_cmp_services, wrap-around included."""
    result = wrap_int(s1.fwmark - s2.fwmark)
    if result:
        return result
    result = s1.af - s2.af
    if result:
        return result
    result = s1.protocol - s2.protocol
    if result:
        return result
    result = _compare_addresses(s1.af, None if s1.fwmark else s1.addr, None if s2.fwmark else s2.addr)
    if result:
        return result
    return s1.port - s2.port


def compare_dests(d1: object, d2: object) -> int:
    """libipvs ipvs_cmp_dests."""
    result = _compare_addresses(d1.af, d1.addr, d2.addr)
    if result:
        return result
    return d1.port - d2.port


def glibc_qsort(items: list, compare: Callable[[object, object], int]) -> list:
    """glibc's qsort for small arrays: a top-down merge sort taking the left item on ties."""
    if len(items) <= 1:
        return list(items)
    half = len(items) // 2
    left = glibc_qsort(items[:half], compare)
    right = glibc_qsort(items[half:], compare)
    merged = []
    i = j = 0
    while i < len(left) and j < len(right):
        if compare(left[i], right[j]) <= 0:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged
