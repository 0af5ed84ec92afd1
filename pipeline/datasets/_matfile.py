"""Check a MATLAB v5 ``.mat`` file for what would crash ``scipy.io.loadmat`` before it reads it.

Why: scipy's v5 reader looks up the data-type code of every numeric or char element in a
20-slot C table without a range check (``VarReader5.read_numeric`` / ``read_char``;
scipy/scipy#25349, still open as of scipy 1.17). A corrupt file with an unknown code there —
one flipped byte is enough, about one in a hundred random corruptions of a 300W-LP ``.mat`` —
*segfaults* the interpreter, which no ``except`` can catch: it would kill the Ray worker (and,
retried, the whole ingest job) instead of quarantining one record. Deeply nested cells could
likewise exhaust the C stack of its recursive reader.

:func:`check_mat_v5` therefore replays scipy's reading order without building any array
(MATLAB "MAT-File Format", Level 5, https://www.mathworks.com/help/pdf_doc/matlab/matfile_format.pdf):
the 128-byte header; per variable a tag (``miMATRIX``, or ``miCOMPRESSED`` holding one), the
array flags, dimensions and name, then the class's elements in the order scipy reads them —
which, for an uncompressed variable whose flags or dimensions are corrupt, runs past the
variable's end into the next one, exactly as scipy's stream does. It raises where scipy would
crash (or allocate without bound) and stops quietly where scipy raises an ordinary exception,
leaving that error to scipy.
"""

from __future__ import annotations

import struct
import zlib

from pipeline.datasets.base import BadRecord

# Data types scipy reads into a dtype: miINT8 … miUINT64 without the reserved 8, 10 and 11,
# plus miUTF8/16/32.
NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED, MI_UTF8 = 1, 5, 6, 14, 15, 16
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE, MX_FUNCTION, MX_OPAQUE = 1, 2, 3, 4, 5, 16, 17
MX_NUMERIC = frozenset(range(6, 16))  # double, single, int8 … uint64
MAX_DIMS = 32  # scipy's limit
MAX_DEPTH = 32  # nested cells / structs; real head-pose .mat files have none
MAX_INFLATED = 256 * 1024**2  # per compressed variable; a 300W-LP sample is a few kB


class _Stop(Exception):
    """scipy raises an ordinary exception here: nothing more of this variable is read."""


def check_mat_v5(data: bytes, rel: str) -> None:
    """Refuse a ``.mat`` file that would crash ``scipy.io.loadmat``.

    Args:
        data: the file's bytes.
        rel: the file's path relative to the raw root, for the error.

    Raises:
        BadRecord: ``(rel, "mat", …)`` when the file is not a MATLAB 5 (v5 / v7) file, holds a
            data-type code scipy cannot map where it reads numeric data, nests matrices deeper
            than :data:`MAX_DEPTH`, has dimensions asking for more cells than the file could
            hold, a MATLAB object variable, or a compressed variable inflating past
            :data:`MAX_INFLATED`.
    """
    # scipy picks its v4 reader when the first 4 bytes hold a zero, v5 on the "IM"/"MI" mark.
    if len(data) < 128 or 0 in data[:4] or data[126:128] not in (b"IM", b"MI"):
        raise BadRecord(rel, "mat", "not a MATLAB 5 .mat file (no v5 header)")
    order = "<" if data[126:128] == b"IM" else ">"
    top = _Scan(memoryview(data), order, rel, pos=128)
    while top.pos < len(data):  # scipy reads every variable; a failed one is skipped, not fatal
        try:
            mdtype, count = top.full_tag()
        except _Stop:
            return
        if count == 0:
            return  # scipy: "Did not read any bytes"
        start, top.pos = top.pos, top.pos + count
        try:
            if mdtype == MI_COMPRESSED:
                inner = _Scan(_inflate(top.data[start : start + count], rel), order, rel, pos=0)
                if inner.full_tag()[0] == MI_MATRIX:
                    inner.matrix_body(depth=1)
            elif mdtype == MI_MATRIX:
                # An uncompressed variable is read from the file stream itself, not bounded by its size.
                _Scan(top.data, order, rel, pos=start).matrix_body(depth=1)
        except _Stop:
            pass


class _Scan:
    """A cursor over a v5 byte stream that reads elements as scipy's ``VarReader5`` does."""

    def __init__(self, data: memoryview, order: str, rel: str, pos: int):
        self.data, self.order, self.rel, self.pos = data, order, rel, pos

    def _u4s(self) -> tuple[int, int]:
        if self.pos + 8 > len(self.data):
            raise _Stop
        values = struct.unpack_from(self.order + "II", self.data, self.pos)
        self.pos += 8
        return values

    def full_tag(self) -> tuple[int, int]:
        return self._u4s()

    def element(self) -> tuple[int, memoryview]:
        """One element (full or small-data format); returns its type code and data."""
        first, second = self._u4s()
        if first >> 16:  # small data element: 2-byte size, 2-byte type, data in the tag's last 4 bytes
            count = first >> 16
            if count > 4:
                raise _Stop
            return first & 0xFFFF, self.data[self.pos - 4 : self.pos - 4 + count]
        start, end = self.pos, self.pos + second
        if end > len(self.data):
            raise _Stop
        self.pos = end + (-second % 8)  # elements are 8-byte aligned
        return first, self.data[start:end]

    def numeric(self, *, allow_empty: bool = False) -> None:
        """An element scipy turns into an array through its unchecked type table."""
        at = self.pos
        mdtype, body = self.element()
        if mdtype not in NUMERIC_TYPES and not (allow_empty and len(body) == 0):
            raise BadRecord(self.rel, "mat", f"unknown data type code {mdtype} in the element at byte {at}")

    def int32s(self) -> list[int]:
        mdtype, body = self.element()
        if mdtype not in (MI_INT32, MI_UINT32) or len(body) > 4 * MAX_DIMS:
            raise _Stop
        return list(struct.unpack_from(f"{self.order}{len(body) // 4}i", body))

    def int8_string(self) -> bytes:
        mdtype, body = self.element()
        if mdtype not in (MI_INT8, MI_UTF8):
            raise _Stop
        return bytes(body)

    def matrix(self, depth: int) -> None:
        """A nested matrix (scipy's ``read_mi_matrix``)."""
        mdtype, count = self.full_tag()
        if mdtype != MI_MATRIX:
            raise _Stop
        if count:
            self.matrix_body(depth + 1)

    def matrix_body(self, depth: int) -> None:
        """Flags, dimensions, name and the class's elements (``read_header`` + ``array_from_header``)."""
        if depth > MAX_DEPTH:
            raise BadRecord(self.rel, "mat", f"matrices nested deeper than {MAX_DEPTH}")
        self._u4s()  # the array-flags element's tag, which scipy skips unread
        flags, _ = self._u4s()
        mclass, is_complex = flags & 0xFF, flags >> 11 & 1
        if mclass == MX_OPAQUE:
            # MATLAB objects (function handles, strings, tables): their layout differs between
            # scipy releases, and no head-pose label is one.
            raise BadRecord(self.rel, "mat", "a MATLAB object (opaque class) variable is not supported")
        dims = self.int32s()
        self.int8_string()  # name
        if mclass in MX_NUMERIC:
            for _ in range(2 if is_complex else 1):
                self.numeric()
        elif mclass == MX_SPARSE:
            for _ in range(2 + (2 if is_complex else 1)):  # row indices, column pointers, data (+ imaginary)
                self.numeric()
        elif mclass == MX_CHAR:
            self.numeric(allow_empty=True)  # scipy maps no type for an empty char element
        elif mclass in (MX_CELL, MX_STRUCT, MX_OBJECT):
            if mclass == MX_OBJECT:
                self.int8_string()  # class name
            fields = 1
            if mclass != MX_CELL:
                lengths = self.int32s()
                names = self.int8_string()
                if len(lengths) != 1 or lengths[0] == 0:
                    raise _Stop
                fields = len(names) // lengths[0]
            size = 1
            for d in dims:
                size *= d
            # Every nested matrix takes at least an 8-byte tag: more than the stream can hold is
            # corrupt, and scipy would first allocate an object array of that size.
            if size * max(fields, 0) > (len(self.data) - self.pos) // 8:
                raise BadRecord(self.rel, "mat", f"dimensions {dims} ask for more cells than the file holds")
            for _ in range(size * max(fields, 0)):
                self.matrix(depth)
        elif mclass == MX_FUNCTION:
            self.matrix(depth)


def _inflate(data: memoryview, rel: str) -> memoryview:
    """Inflate a compressed variable; on a corrupt stream, what inflated before the damage (scipy
    reads that far before it fails)."""
    inflater = zlib.decompressobj()
    out = bytearray()
    try:
        for i in range(0, len(data), 4096):
            out += inflater.decompress(data[i : i + 4096], MAX_INFLATED + 1 - len(out))
            if len(out) > MAX_INFLATED:
                raise BadRecord(rel, "mat", f"a compressed variable inflates past {MAX_INFLATED} bytes")
    except zlib.error:
        pass
    return memoryview(bytes(out))
