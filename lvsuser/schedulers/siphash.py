"""The kernel's hsiphash on 64-bit hosts: SipHash-1-3 with a 128-bit key, truncated to 32 bits.

lib/siphash.c makes "HalfSipHash" on 64-bit machines a SipHash-1-3 (one compression round,
three finalization rounds) over little-endian 64-bit words, returning the low 32 bits of
v0 ^ v1 ^ v2 ^ v3.  ip_vs_mh.c hashes one host-order u32 with it.
"""
from __future__ import annotations

MASK64 = 0xFFFFFFFFFFFFFFFF


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int):
    v0 = (v0 + v1) & MASK64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key0: int, key1: int) -> int:
    """hsiphash(data, len, {key0, key1}) as the kernel computes it on 64-bit."""
    v0 = 0x736F6D6570736575 ^ key0
    v1 = 0x646F72616E646F6D ^ key1
    v2 = 0x6C7967656E657261 ^ key0
    v3 = 0x7465646279746573 ^ key1
    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


def hsiphash_u32(value: int, key0: int, key1: int) -> int:
    """hsiphash of one u32 as stored in memory on a little-endian host."""
    return hsiphash((value & 0xFFFFFFFF).to_bytes(4, "little"), key0, key1)
