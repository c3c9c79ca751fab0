"""The box layer of ISO base media files (MP4, MOV, M4A): walking boxes, finding the `moov`,
reading a full box's table, and the two ways a reader of what we wrote gives up. What the
boxes mean is `mp4index` (an output's streams and durations) and `h264` (a smart-cut piece's
avcC and sample sizes).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

MAX_MOOV = 16 * 1024 * 1024  # bytes; a moov this big is not one of our clips' (ask ffprobe)


class Unsure(Exception):
    """The file holds something the reader does not model: ask ffprobe instead."""


class Broken(Exception):
    """The file was cut short (its index or header says more than the file holds)."""


def boxes(data: bytes | memoryview, lo: int, hi: int) -> Iterator[tuple[bytes, int, int]]:
    """The boxes in data[lo:hi]: (type, body start, end). A box that does not fit is Unsure."""
    pos = lo
    while pos + 8 <= hi:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > hi:
                raise Unsure("a box header runs past its parent")
            (size,), header = struct.unpack_from(">Q", data, pos + 8), 16
        elif size == 0:
            size = hi - pos
        if size < header or pos + size > hi:
            raise Unsure(f"box {kind!r} runs past its parent")
        yield bytes(kind), pos + header, pos + size
        pos += size


def read_moov(path: Path) -> tuple[bytes, int]:
    """(the top-level `moov` box's body, the file's size), found by seeking over the others.
    Unsure when the file does not start with `ftyp` or has no (whole) moov."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        pos = 0
        first = True
        while pos + 8 <= end:
            f.seek(pos)
            head = f.read(16)
            size, kind = struct.unpack_from(">I4s", head)
            header = 8
            if size == 1 and len(head) == 16:
                (size,), header = struct.unpack_from(">Q", head, 8), 16
            elif size == 0:
                size = end - pos
            if first and kind != b"ftyp":
                raise Unsure("not an ISO base media file (no ftyp first)")
            first = False
            if size < header or pos + size > end:
                raise Unsure(f"box {kind!r} at {pos} runs past the end of the file")
            if kind == b"moov":
                if size > MAX_MOOV:
                    raise Unsure(f"moov of {size} bytes")
                f.seek(pos + header)
                return f.read(size - header), end
            pos += size
    raise Unsure("no moov box")


def table_entries(data: bytes, body: int, end: int, header: int, code: str, per_entry: int) -> array:
    """A full box's table of big-endian unsigned entries (a count at body+4, then the table at
    body+header), as a compact array: a long table must not become a list of Python ints."""
    (count,) = struct.unpack_from(">I", data, body + 4)
    table = array(code)
    stop = body + header + count * per_entry * table.itemsize
    if stop > end:
        raise Unsure("a sample table runs past its box")
    table.frombytes(data[body + header:stop])
    if sys.byteorder == "little":
        table.byteswap()
    return table
