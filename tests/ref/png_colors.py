#!/usr/bin/env python3
"""Counts the pixels of given colours in a PNG (8-bit RGB or RGBA, non-interlaced, as
Chromium's screenshots are), with a small tolerance for anti-aliasing. Standard library only,
so tests need no imaging package.
usage: png_colors.py [--runs] FILE.png RRGGBB... -> one line "RRGGBB COUNT" per colour;
with --runs a third column, the longest horizontal run of the colour in any row (how wide
a drawn line is on the screen, e.g. a chart's axis)."""
import struct
import sys
import zlib


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit("%s: not a PNG" % path)
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise SystemExit("%s: unsupported PNG (depth %d, colour type %d)" % (path, depth, ctype))
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def main():
    args = sys.argv[1:]
    runs = args[:1] == ["--runs"]
    if runs:
        args = args[1:]
    w, h, bpp, rows = decode(args[0])
    names = args[1:]
    wanted = [tuple(int(c[k:k + 2], 16) for k in (0, 2, 4)) for c in names]
    counts, longest = [0] * len(wanted), [0] * len(wanted)
    for line in rows:
        run = [0] * len(wanted)
        for x in range(0, w * bpp, bpp):
            px = line[x], line[x + 1], line[x + 2]
            for k, col in enumerate(wanted):
                if abs(px[0] - col[0]) <= 12 and abs(px[1] - col[1]) <= 12 and abs(px[2] - col[2]) <= 12:
                    counts[k] += 1
                    run[k] += 1
                    longest[k] = max(longest[k], run[k])
                else:
                    run[k] = 0
    for c, n, r in zip(names, counts, longest):
        print(c, n, r) if runs else print(c, n)


if __name__ == "__main__":
    main()
