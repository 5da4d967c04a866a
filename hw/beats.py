"""The beat types every engine stage, the frame builder and parser, the card and the AXI4-Stream
adapters share: one block index entry (``IndexEntry``) and the beats of a block's coded bytes
(``CodeBeat``, ``BEAT_BYTES`` a beat)."""

from amaranth.hdl import unsigned
from amaranth.lib import data

__all__ = ["BEAT_BYTES", "CodeBeat", "IndexEntry"]

BEAT_BYTES = 16  # coded bytes per output beat: a whole block is at most 132 bytes = 9 beats

IndexEntry = data.StructLayout({
    "length": unsigned(11),  # bytes of the block's payload
    "mb_minus_1": unsigned(3),  # mask bytes - 1 (CODED only, else 0)
    "kind": unsigned(2),  # frame.Kind
})
"""One block index entry; its 16 bits are the u16 ``frame.pack_index`` stores."""

CodeBeat = data.StructLayout({
    "data": unsigned(8 * BEAT_BYTES),  # byte k of the beat in bits 8k .. 8k + 7 (little-endian)
    "count": range(1, BEAT_BYTES + 1),  # valid bytes, 1..16
    "last": unsigned(1),  # the block's last beat
})
"""Coded bytes of one block: every beat but the last carries ``BEAT_BYTES`` bytes; the last
carries ``count`` (1..16) and has ``last`` set. Bytes beyond ``count`` are zero. A block's
bytes never share a beat with another block's."""
