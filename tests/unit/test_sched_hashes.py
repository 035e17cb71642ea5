"""The kernel hash functions the schedulers depend on, in Python and C."""
from __future__ import annotations

import ipaddress
import random

from lvsuser.schedulers import base, siphash


def siphash_c_d(data, key0, key1, c_rounds, d_rounds):
    """Generic SipHash-c-d built from the module's round function (64-bit output)."""
    v = [0x736F6D6570736575 ^ key0, 0x646F72616E646F6D ^ key1,
         0x6C7967656E657261 ^ key0, 0x7465646279746573 ^ key1]
    whole = len(data) - len(data) % 8
    blocks = [int.from_bytes(data[i:i + 8], "little") for i in range(0, whole, 8)]
    blocks.append(((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little"))
    for m in blocks:
        v[3] ^= m
        for _ in range(c_rounds):
            v = list(siphash._sipround(*v))
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(d_rounds):
        v = list(siphash._sipround(*v))
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_sipround_matches_the_siphash_paper_vector():
    # SipHash-2-4 of bytes 00..0e under key 00..0f (Aumasson & Bernstein, appendix A).
    key = bytes(range(16))
    out = siphash_c_d(bytes(range(15)), int.from_bytes(key[:8], "little"),
                      int.from_bytes(key[8:], "little"), 2, 4)
    assert out == 0xA129CA6149BE45E5


def test_hsiphash_is_siphash_1_3_truncated():
    rng = random.Random(3)
    for _ in range(50):
        value = rng.getrandbits(32)
        k0, k1 = rng.getrandbits(64), rng.getrandbits(64)
        expected = siphash_c_d(value.to_bytes(4, "little"), k0, k1, 1, 3) & 0xFFFFFFFF
        assert siphash.hsiphash_u32(value, k0, k1) == expected


def test_hash_32_and_address_fold():
    assert base.hash_32(1, 8) == 0x61
    assert base.hash_32(0xFFFFFFFF, 32) == (0xFFFFFFFF * 0x61C88647) & 0xFFFFFFFF
    assert base.addr_fold(ipaddress.ip_address("198.18.2.1")) == 0xC6120201
    v6 = ipaddress.ip_address("2001:db8::1:0:0:1")
    assert base.addr_fold(v6) == 0x20010DB8 ^ 0 ^ 0x00010000 ^ 0x00000001
