"""The card's register map: one definition for the gateware, the testbenches and the driver.

AXI4-Lite, 32-bit data, 4-byte aligned word addresses, little-endian. The map is ``REGS`` (a
``RegisterMap`` of ``Register`` objects with ``Field`` bit ranges and reset values); docs/card.md
renders it as a table. Access types:

- ``RO``: the card owns the value; host writes are ignored.
- ``RW``: the host owns the value; ``pulse`` fields self-clear: they read 1 from the host's write
  until the card has carried the action out (a soft reset takes as long as its flush), then 0.
- ``W1C``: the card sets bits; the host clears a bit by writing 1 to it.

64-bit counters are two words, LO at ``offset`` and HI at ``offset + 4``. Read them HI, LO, HI and
retry while HI changes (``read64``): no latch or shadow register is needed in the gateware.

Nothing here imports Amaranth at module level (the driver runs without it); ``field_layout``
builds the ``amaranth.lib.data`` layout of a register for the gateware.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from actpack.codec.frame import VERSION as FORMAT_VERSION
from actpack.codec.frame import crc32c_of
from actpack.codec.spec import DType, Mode

from .protocol import PROTOCOL_VERSION

GATEWARE_MODES = frozenset({Mode.DCT, Mode.EB, Mode.SFPR8, Mode.MASK})
"""The frame modes the gateware's engines implement: the one place that says so. ``Caps``
claims no other mode, the card answers another with UNSUPPORTED, and the hardware tests and
benches iterate this set. Mode "eb2" (docs/format.md 6.6) is format and software only so far."""

__all__ = [
    "CARD_MAGIC",
    "FORMAT_VERSION",
    "GATEWARE_MODES",
    "REGMAP_VERSION",
    "REGS",
    "REG_SPACE",
    "TABLE_WORDS",
    "Access",
    "Caps",
    "CardConfig",
    "Field",
    "Register",
    "RegisterMap",
    "field_layout",
    "read64",
    "version_word",
]

CARD_MAGIC = int.from_bytes(b"ACTC", "little")  # a hexdump of the BAR shows "ACTC"
REGMAP_VERSION = 1  # bump on any change of REGS
REG_SPACE = 0x1000  # bytes of register space the driver maps (one page)
TABLE_WORDS = 16  # the quantization table window: 64 u8 entries, 4 per word


class Access(enum.Enum):
    RO = "ro"
    RW = "rw"
    W1C = "w1c"


@dataclass(frozen=True)
class Field:
    """Bits ``[lsb, lsb + width)`` of a register word."""

    name: str
    lsb: int
    width: int = 1
    reset: int = 0
    doc: str = ""
    pulse: bool = False  # RW only: self-clearing action bit

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, word: int) -> int:
        return (word >> self.lsb) & ((1 << self.width) - 1)

    def put(self, value: int) -> int:
        """``value`` placed in this field (``ValueError`` if it does not fit)."""
        if not 0 <= value < 1 << self.width:
            raise ValueError(f"{self.name}: {value} does not fit in {self.width} bits")
        return value << self.lsb


@dataclass(frozen=True)
class Register:
    """One register (``width`` 32 or 64) or, with ``count`` > 1, an array of 32-bit words."""

    name: str
    offset: int
    access: Access
    doc: str
    fields: tuple[Field, ...] = ()
    width: int = 32
    count: int = 1
    reset: int = 0  # whole-word reset value of registers without fields

    @property
    def size(self) -> int:
        return self.width // 8 * self.count

    @property
    def words(self) -> tuple[int, ...]:
        """Byte offsets of the 32-bit words this register occupies."""
        return tuple(range(self.offset, self.offset + self.size, 4))

    @property
    def lo(self) -> int:
        return self.offset

    @property
    def hi(self) -> int:
        if self.width != 64:
            raise AttributeError(f"{self.name} is a 32-bit register")
        return self.offset + 4

    @property
    def reset_value(self) -> int:
        return self.reset | sum(f.put(f.reset) for f in self.fields)

    @property
    def pulse_mask(self) -> int:
        return sum(f.mask for f in self.fields if f.pulse)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def __getattr__(self, name: str) -> Field:
        # REGS.CONTROL.RUN: fields as attributes (upper-case names only, so dataclass internals
        # and typos in lower case still raise AttributeError normally).
        if name.isupper():
            try:
                return self.field(name)
            except KeyError:
                pass
        raise AttributeError(name)

    def value(self, **fields: int) -> int:
        """The word with the given fields set (by name), all others 0."""
        return sum(self.field(k).put(v) for k, v in fields.items())

    def decode(self, word: int) -> dict[str, int]:
        return {f.name: f.get(word) for f in self.fields}


@dataclass(frozen=True)
class RegisterMap:
    registers: tuple[Register, ...]
    space: int = REG_SPACE
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {r.name: r for r in self.registers})
        self.validate()

    def __iter__(self) -> Iterator[Register]:
        return iter(self.registers)

    def __getattr__(self, name: str) -> Register:
        if name.isupper() and name in self._by_name:
            return self._by_name[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Register:
        return self._by_name[name]

    def at(self, offset: int) -> Register | None:
        """The register holding the word at byte ``offset`` (``None`` for a hole)."""
        for r in self.registers:
            if offset in r.words:
                return r
        return None

    def validate(self) -> None:
        """Raise ``ValueError`` for overlaps, misalignment, fields outside a word or overlapping,
        registers outside the space, or attributes that make no sense for the access type."""
        used: dict[int, str] = {}
        names = set()
        for r in self.registers:
            if r.name in names:
                raise ValueError(f"register {r.name}: defined twice")
            names.add(r.name)
            if r.width not in (32, 64):
                raise ValueError(f"register {r.name}: width must be 32 or 64, got {r.width}")
            if r.offset % (r.width // 8) or r.offset % 4:
                raise ValueError(f"register {r.name}: offset {r.offset:#x} is not aligned")
            if r.count < 1 or (r.count > 1 and r.width != 32):
                raise ValueError(f"register {r.name}: arrays are of 32-bit words")
            if r.offset + r.size > self.space:
                raise ValueError(f"register {r.name}: beyond the {self.space:#x}-byte space")
            for w in r.words:
                if w in used:
                    raise ValueError(f"register {r.name}: word {w:#x} overlaps {used[w]}")
                used[w] = r.name
            mask = 0
            for f in r.fields:
                if f.lsb < 0 or f.width < 1 or f.lsb + f.width > 32:
                    raise ValueError(f"{r.name}.{f.name}: bits outside the 32-bit word")
                if mask & f.mask:
                    raise ValueError(f"{r.name}.{f.name}: overlaps another field")
                mask |= f.mask
                if not 0 <= f.reset < 1 << f.width:
                    raise ValueError(f"{r.name}.{f.name}: reset {f.reset} does not fit")
                if f.pulse and r.access is not Access.RW:
                    raise ValueError(f"{r.name}.{f.name}: pulse fields are RW")
            if r.fields and r.width != 32:
                raise ValueError(f"register {r.name}: 64-bit registers are plain counters")
            if not r.doc:
                raise ValueError(f"register {r.name}: needs a docstring")


def _irq_fields() -> tuple[Field, ...]:
    return (
        Field("JOB_DONE", 0, doc="a job ended (status record or frame sent)"),
        Field("JOB_ERROR", 1, doc="a job ended with a nonzero status code"),
        Field("CRC_ERROR", 2, doc="a CRC mismatch was detected (descriptor or frame)"),
        Field("PROTOCOL_ERROR", 3, doc="a malformed job was rejected"),
    )


def _counter(name: str, offset: int, doc: str) -> Register:
    return Register(name, offset, Access.RO, doc, width=64)


def version_word() -> int:
    """The value of VERSION for this map, protocol and frame format."""
    return REGS.VERSION.value(FORMAT=FORMAT_VERSION, REGMAP=REGMAP_VERSION,
                              PROTOCOL=PROTOCOL_VERSION)


REGS = RegisterMap((
    Register("MAGIC", 0x000, Access.RO, "Identifies an actpack card: CARD_MAGIC ('ACTC').",
             reset=CARD_MAGIC),
    Register("VERSION", 0x004, Access.RO,
             "Versions the driver must match exactly: frame format, register map, job protocol.",
             fields=(Field("FORMAT", 0, 16, FORMAT_VERSION, "actpack.codec.frame.VERSION"),
                     Field("REGMAP", 16, 8, REGMAP_VERSION, "hw.regs.REGMAP_VERSION"),
                     Field("PROTOCOL", 24, 8, PROTOCOL_VERSION, "hw.protocol.PROTOCOL_VERSION"))),
    Register("CAPS", 0x008, Access.RO,
             "What this bitstream implements (a generator parameter; see Caps).",
             fields=(Field("MODES", 0, 8, doc="bit m-1 set: frame mode m supported"),
                     Field("DTYPES", 8, 4, doc="bit d-1 set: frame dtype d supported"),
                     Field("COMPRESS", 12, doc="compress engine present"),
                     Field("DECOMPRESS", 13, doc="decompress engine present"),
                     Field("LANES", 16, 4, doc="engine lanes (8 values/cycle each)"),
                     Field("STREAM_BYTES_LOG2", 20, 4,
                           doc="AXI4-Stream data width is 2**n bytes"))),
    Register("CONFIG_HASH", 0x00C, Access.RO,
             "CRC32C of the generator configuration (CardConfig.config_hash): tells two "
             "bitstreams with equal CAPS apart."),
    Register("CONTROL", 0x010, Access.RW,
             "Run, soft reset and the operation of the next job. Write pulses alone and wait "
             "until they read 0 before the next write of CONTROL.",
             fields=(Field("RUN", 0, doc="1: the engines take jobs from H2C; 0: H2C stalls"),
                     Field("SOFT_RESET", 1, pulse=True,
                           doc="abort the job in flight, drop its input up to tlast and its "
                               "output, clear STATUS; counters are kept"),
                     Field("CLEAR_COUNTERS", 2, pulse=True, doc="zero the 64-bit counters"),
                     Field("OP", 4, 2, doc="hw.protocol.Op of the next job; the descriptor's "
                                           "op must equal it (else BAD_OP)"))),
    Register("STATUS", 0x014, Access.RO, "Engine state; progress without interrupts.",
             fields=(Field("BUSY", 0, doc="a job is in flight"),
                     Field("ERROR", 1, doc="the last job ended with a nonzero code"),
                     Field("RESETTING", 2, doc="a soft reset is in progress"),
                     Field("LAST_CODE", 8, 8, doc="hw.protocol.ErrorCode of the last job"),
                     Field("JOBS_DONE", 16, 16, doc="jobs ended since reset, modulo 2**16"))),
    Register("IRQ_STATUS", 0x018, Access.W1C, "Interrupt causes (sticky; write 1 to clear).",
             fields=_irq_fields()),
    Register("IRQ_ENABLE", 0x01C, Access.RW, "Interrupt causes that raise the user IRQ.",
             fields=_irq_fields()),
    Register("BUFFER_KIB", 0x020, Access.RO,
             "Frame buffer in KiB: a compress job whose frame_bound exceeds it is rejected "
             "(TOO_LARGE); the card holds index and payload until the header can be sent."),
    Register("SCRATCH", 0x024, Access.RW, "Free for the host: a bus check (write, read back)."),
    Register("LAST_TAG", 0x028, Access.RO, "The descriptor tag of the last job that ended."),
    _counter("FRAMES", 0x040, "Frames produced (compress) and consumed (decompress)."),
    _counter("BYTES_IN", 0x048, "H2C bytes accepted, descriptors included."),
    _counter("BYTES_OUT", 0x050, "C2H bytes sent, status records included."),
    _counter("CRC_ERRORS", 0x058, "CRC mismatches detected (descriptor, frame header, body)."),
    _counter("PROTOCOL_ERRORS", 0x060, "Jobs rejected for any reason other than a CRC."),
    Register("TABLE", 0x100, Access.RW,
             "Quantization table window for dct compress jobs: entry 4k+j (row-major 8v+u) in "
             "bits [8j, 8j+8) of word k. Written by the host while no job is in flight; the "
             "descriptor's table_crc must match. Decompress uses the frame's own table.",
             count=TABLE_WORDS),
))


def read64(read32: Callable[[int], int], reg: Register) -> int:
    """A consistent 64-bit counter value from 32-bit reads: HI, LO, HI, retried while HI moves."""
    hi = read32(reg.hi)
    while True:
        lo = read32(reg.lo)
        hi2 = read32(reg.hi)
        if hi2 == hi:
            return hi << 32 | lo
        hi = hi2


@dataclass(frozen=True)
class Caps:
    """The CAPS register as Python values."""

    modes: frozenset[Mode] = GATEWARE_MODES
    dtypes: frozenset[DType] = frozenset(DType)
    compress: bool = True
    decompress: bool = True
    lanes: int = 1
    stream_bytes: int = 64

    def word(self) -> int:
        if self.stream_bytes < 1 or self.stream_bytes & (self.stream_bytes - 1):
            raise ValueError(f"stream_bytes: a power of two, got {self.stream_bytes}")
        c = REGS.CAPS
        return c.value(MODES=sum(1 << (int(m) - 1) for m in self.modes),
                       DTYPES=sum(1 << (int(d) - 1) for d in self.dtypes),
                       COMPRESS=int(self.compress), DECOMPRESS=int(self.decompress),
                       LANES=self.lanes, STREAM_BYTES_LOG2=self.stream_bytes.bit_length() - 1)

    @classmethod
    def from_word(cls, word: int) -> Caps:
        f = REGS.CAPS.decode(word)
        return cls(frozenset(m for m in Mode if f["MODES"] >> (int(m) - 1) & 1),
                   frozenset(d for d in DType if f["DTYPES"] >> (int(d) - 1) & 1),
                   bool(f["COMPRESS"]), bool(f["DECOMPRESS"]), f["LANES"],
                   1 << f["STREAM_BYTES_LOG2"])


@dataclass(frozen=True)
class CardConfig:
    """What a card build is: its capabilities and frame buffer. The gateware generator's own
    parameters extend this; ``config_hash`` covers every field."""

    caps: Caps = Caps()
    buffer_kib: int = 64 * 1024

    def config_hash(self) -> int:
        c = self.caps
        text = (f"modes={sorted(int(m) for m in c.modes)};dtypes={sorted(int(d) for d in c.dtypes)}"
                f";compress={c.compress};decompress={c.decompress};lanes={c.lanes}"
                f";stream_bytes={c.stream_bytes};buffer_kib={self.buffer_kib}")
        return crc32c_of(text.encode())

    def reset_words(self) -> dict[int, int]:
        """Every register word's value after reset (byte offset -> u32)."""
        words = {w: 0 for r in REGS for w in r.words}
        for r in REGS:
            if r.width == 32 and r.count == 1:
                words[r.offset] = r.reset_value
        words[REGS.CAPS.offset] = self.caps.word()
        words[REGS.CONFIG_HASH.offset] = self.config_hash()
        words[REGS.BUFFER_KIB.offset] = self.buffer_kib
        return words


def field_layout(reg: Register):
    """``amaranth.lib.data.StructLayout`` of ``reg``'s fields (lower-case names, gaps as
    ``_rsvd<lsb>``), for the gateware's register file."""
    from amaranth.lib import data

    members, pos = {}, 0
    for f in sorted(reg.fields, key=lambda f: f.lsb):
        if f.lsb > pos:
            members[f"_rsvd{pos}"] = f.lsb - pos
        members[f.name.lower()] = f.width
        pos = f.lsb + f.width
    if pos < 32:
        members[f"_rsvd{pos}"] = 32 - pos
    return data.StructLayout(members)
