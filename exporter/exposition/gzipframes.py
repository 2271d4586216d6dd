"""One gzip member made of independently compressed pieces: each piece is raw deflate ending on
a full flush (no history, byte aligned, never final), so pieces concatenate in any order into one
deflate stream, and the member's CRC-32 is combined from the pieces' without reading them again."""

from __future__ import annotations

import struct
import threading
import zlib

# The body is highly repetitive: level 1 compresses it almost as well as level 6, in a fraction
# of the time (figures in bench/RESULTS.md).
GZIP_LEVEL = 1
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty, final, fixed-Huffman deflate block

_local = threading.local()


def deflate_piece(data: bytes) -> bytes:
    """Raw deflate of `data` ending on a full flush: decodable with no history, byte aligned,
    never final, so pieces concatenate in any order into one deflate stream."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 9)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


_POLY = 0xEDB88320  # CRC-32 (gzip), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order), as zlib computes it."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) mod p
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))

# Multiplying by x^(8 * 2^j) (appending 2^j zero bytes) is linear: per j, a table of its effect
# on each byte of the CRC, built when first needed.
_SHIFT_TABLES: dict[int, list[int]] = {}


def _shift_table(j: int) -> list[int]:
    table = _SHIFT_TABLES.get(j)
    if table is None:
        if j == 0:
            factor = _X2N[3]
            table = [_multmodp(factor, b << (8 * i)) for i in range(4) for b in range(256)]
        else:  # twice the shift of j - 1: apply its table twice (much cheaper than _multmodp)
            t = _shift_table(j - 1)
            table = []
            for i in range(4):
                for b in range(256):
                    v = b << (8 * i)
                    v = t[v & 255] ^ t[256 + ((v >> 8) & 255)] ^ t[512 + ((v >> 16) & 255)] ^ t[768 + (v >> 24)]
                    table.append(t[v & 255] ^ t[256 + ((v >> 8) & 255)] ^ t[512 + ((v >> 16) & 255)] ^ t[768 + (v >> 24)])
        _SHIFT_TABLES[j] = table
    return table


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, which Python's zlib
    module does not offer)."""
    j = 0
    while length2:
        if length2 & 1:
            t = _shift_table(j)
            crc1 = t[crc1 & 255] ^ t[256 + ((crc1 >> 8) & 255)] ^ t[512 + ((crc1 >> 16) & 255)] ^ t[768 + (crc1 >> 24)]
        length2 >>= 1
        j += 1
    return crc1 ^ crc2


def gzip_wrap(pieces: list[bytes], crc: int, size: int) -> list[bytes]:
    """A gzip member around deflate pieces of a body with this CRC-32 and length."""
    return [_GZIP_HEADER, *pieces, _FINAL_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)]
