"""Wire layouts: one definition of each fixed-width little-endian record, for software and gateware.

A ``Layout`` is a list of named fields with ``struct`` codes. From it come the ``struct.Struct``
the host packs and unpacks with (by field name), the byte offset and size of every field, and
the ``amaranth.lib.data.StructLayout`` the gateware reads the same bytes through
(``data.View``: ``desc.nblocks`` instead of bits ``[128, 192)``). Amaranth is imported only by
``Layout.shape()``, so the codec stays importable without it.

The frame's layouts are in ``actpack.codec.frame`` (``FIXED_HEADER``, ``SCALE_RECORD``,
``TRAILER``), the job protocol's in ``hw.protocol`` (``DESCRIPTOR``, ``STATUS``).
"""

from __future__ import annotations

import enum
import struct
from collections import namedtuple
from dataclasses import dataclass

__all__ = ["Field", "Layout", "in_enum"]

# struct code -> (bytes, signed); floats are carried as their bits in the gateware
_CODES = {"B": (1, False), "H": (2, False), "I": (4, False), "Q": (8, False),
          "b": (1, True), "h": (2, True), "i": (4, True), "q": (8, True),
          "f": (4, False), "d": (8, False)}


@dataclass(frozen=True)
class Field:
    """One field: ``code`` is a ``struct`` code (``B H I Q b h i q f d`` or ``<n>s`` for bytes);
    a ``reserved`` field is written as zeros unless given and must read back as zeros."""

    name: str
    code: str
    doc: str = ""
    reserved: bool = False

    @property
    def size(self) -> int:
        if self.code.endswith("s"):
            return int(self.code[:-1] or 1)
        return _CODES[self.code][0]

    @property
    def signed(self) -> bool:
        return not self.code.endswith("s") and _CODES[self.code][1]

    @property
    def zero(self):
        return bytes(self.size) if self.code.endswith("s") else 0


class Layout:
    """Named little-endian fields back to back, no implicit padding.

    ``pack(**fields)`` / ``pack_into(buf, offset, **fields)`` take every field by name (reserved
    ones default to zero); ``unpack_from(buf, offset=0)`` gives a named tuple. ``offset(name)``,
    ``end(name)`` and ``size`` are byte counts; ``shape()`` is the Amaranth layout.
    """

    def __init__(self, name: str, fields):
        self.name = name
        self.fields = tuple(fields)
        if not self.fields:
            raise ValueError(f"{name}: a layout needs at least one field")
        for f in self.fields:
            if not isinstance(f, Field):
                raise TypeError(f"{name}: expected Field objects, got {f!r}")
            if not f.code.endswith("s") and f.code not in _CODES:
                raise ValueError(f"{name}.{f.name}: unknown struct code {f.code!r}")
        self.names = tuple(f.name for f in self.fields)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{name}: field names must be unique, got {self.names}")
        self.struct = struct.Struct("<" + "".join(f.code for f in self.fields))
        self._tuple = namedtuple(name, self.names)
        self._by_name, pos = {}, 0
        for f in self.fields:
            self._by_name[f.name] = (f, pos)
            pos += f.size
        self.size = pos
        assert self.size == self.struct.size

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {self.size} bytes: {', '.join(self.names)})"

    def field(self, name: str) -> Field:
        return self._by_name[name][0]

    def offset(self, name: str) -> int:
        """Byte offset of field ``name``."""
        return self._by_name[name][1]

    def end(self, name: str) -> int:
        """Byte offset just past field ``name``."""
        f, pos = self._by_name[name]
        return pos + f.size

    def _values(self, fields: dict) -> list:
        unknown = set(fields) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name}: no field(s) {sorted(unknown)}")
        missing = [f.name for f in self.fields if f.name not in fields and not f.reserved]
        if missing:
            raise TypeError(f"{self.name}: missing field(s) {missing}")
        return [fields.get(f.name, f.zero) for f in self.fields]

    def pack(self, **fields) -> bytes:
        return self.struct.pack(*self._values(fields))

    def pack_into(self, buf, offset: int, **fields) -> None:
        self.struct.pack_into(buf, offset, *self._values(fields))

    def unpack_from(self, buf, offset: int = 0):
        return self._tuple(*self.struct.unpack_from(buf, offset))

    def shape(self):
        """``amaranth.lib.data.StructLayout`` of the same bytes: field ``name`` at bits
        ``8 offset(name)`` on; bytes and floats as unsigned bits, signed codes as signed."""
        from amaranth.hdl import signed, unsigned
        from amaranth.lib import data

        return data.StructLayout({f.name: (signed if f.signed else unsigned)(8 * f.size)
                                  for f in self.fields})


def in_enum(value, enum_cls: type[enum.IntEnum]):
    """``value`` is one of ``enum_cls``'s codes, for an int (a bool) or an Amaranth value (a
    1-bit value); the codes must be contiguous (they are a range check)."""
    codes = sorted(int(e) for e in enum_cls)
    if codes != list(range(codes[0], codes[-1] + 1)):
        raise ValueError(f"{enum_cls.__name__}: codes {codes} are not contiguous")
    return (value >= codes[0]) & (value <= codes[-1])
