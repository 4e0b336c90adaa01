#!/usr/bin/env python3
"""Writes the libFuzzer seed corpus of tests/fuzz/fuzz_compress.c from the payload layouts
in docs/compression.md, independently of the C encoder, so that the unit test that decodes
these files (test_corpus_payloads_decode) pins the documented formats:

  plain-3of300     version 1 plain: indices 3, 10, 200 of n = 300, scale 0.5, int8 1, -2, 127
  plain-v2-3of300  version 2 plain: the same indices, 4-bit values 1, -2, 7, Rice parameter 3
  secagg-17of33    secure: b = 5, w = 7, random-k, R = 1, k = 17 of 33, zero round seed

Usage: python3 tests/ref/make_compress_corpus.py [OUT_DIR] (default tests/fuzz/corpus/compress)
"""
import hashlib
import os
import struct
import sys


def header(version, scheme, n, k):
    return b"MFLC" + bytes([version, scheme]) + b"\0\0" + struct.pack("<II", n, k)


def section(sid, body):
    return struct.pack("<HHI", sid, 0, len(body)) + body


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def bits_lsb_first(fields):
    """fields: (value, nbits) pairs -> bytes, LSB-first within each byte, zero padding."""
    acc, nbits = 0, 0
    for v, nb in fields:
        acc |= (v & ((1 << nb) - 1)) << nbits
        nbits += nb
    return acc.to_bytes((nbits + 7) // 8, "little")


def plain_v1():
    idx, gaps = [3, 10, 200], []
    for j, i in enumerate(idx):
        gaps.append(i if j == 0 else i - idx[j - 1])
    body = b"".join(varint(g) for g in gaps)
    return (header(1, 1, 300, 3) + struct.pack("<I", 256) + section(1, body)
            + section(2, struct.pack("<f", 0.5)) + section(3, struct.pack("<3b", 1, -2, 127)))


def plain_v2():
    idx, bits, rice, chunk = [3, 10, 200], 4, 3, 256
    vals = bits_lsb_first([(v, bits) for v in (1, -2, 7)])
    codes = []
    for j, i in enumerate(idx):
        v = i if j == 0 else i - idx[j - 1] - 1
        codes += [(1, 1)] * (v >> rice) + [(0, 1), (v & ((1 << rice) - 1), rice)]
    return (header(2, 1, 300, 3) + bytes([bits, rice]) + struct.pack("<H", chunk - 1)
            + struct.pack("<f", 0.5) + vals + bits_lsb_first(codes))


def secagg():
    tag = hashlib.blake2b(bytes(32), digest_size=8).digest()
    # the ring body: 15 bytes 01..0e 01, read by the unpacker as 17 elements of 7 bits
    # (17 * 7 = 119 bits, the last bit of byte 15 is padding and zero)
    ring = bytes(range(1, 15)) + b"\x01"
    return (header(1, 2, 33, 17) + bytes([5, 7, 1, 0]) + struct.pack("<f", 1.0) + tag
            + section(4, ring))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/compress"
    os.makedirs(out, exist_ok=True)
    for name, data in (("plain-3of300", plain_v1()), ("plain-v2-3of300", plain_v2()),
                       ("secagg-17of33", secagg())):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
