"""Frame builder: the header template, the block index and the coded payload of one job in, the
complete frame out (docs/format.md section 2), bit-exact with ``actpack.codec.frame.build_frame``.

Why it buffers: the header carries ``payload_bytes`` and a CRC over it, and the index comes
before the payload, so no byte of a frame can leave before the last block is coded (format.md
section 12, "Encoder side"). The builder collects the job in three memories, then streams it out.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from actpack.codec.frame import ALIGN, FIXED_HEADER, HEADER_CRC_BYTES, TRAILER

from .beats import BEAT_BYTES, CodeBeat, IndexEntry

__all__ = ["SECTION", "FrameBeat", "FrameBuilder", "view_at"]

SECTION = ALIGN  # every section starts on a 64-byte boundary (format.md section 2)
_WORD = 8  # bytes the generator emits (and the CRC takes) per step
_ENTRIES_PER_ROW = BEAT_BYTES // 2  # u16 index entries per memory row
_BEAT_BITS = 8 * BEAT_BYTES
_BEAT_SHIFT = BEAT_BYTES.bit_length() - 1
assert 1 << _BEAT_SHIFT == BEAT_BYTES
# the header beat that completes nblocks, and the header word the builder fills in itself
_NB_ROW = (FIXED_HEADER.end("nblocks") - 1) // BEAT_BYTES
_PAYLOAD_WORD = FIXED_HEADER.offset("payload_bytes") // _WORD
assert FIXED_HEADER.offset("nblocks") // BEAT_BYTES == _NB_ROW
assert FIXED_HEADER.offset("payload_bytes") % _WORD == 0
assert FIXED_HEADER.field("payload_bytes").size == _WORD


def view_at(layout, value, offset: int = 0):
    """A ``data.View`` of wire layout ``layout`` (``actpack.codec.layout.Layout``) whose bytes
    from ``offset`` on are ``value`` (a beat or word of the record), the others zero: fields
    of a record read by name from the part of it at hand."""
    bits = 8 * layout.size
    parts = [Const(0, 8 * offset)] if offset else []
    parts.append(value)
    rest = bits - 8 * offset - len(value)
    if rest > 0:
        parts.append(Const(0, rest))
    return data.View(layout.shape(), Cat(*parts)[:bits])

FrameBeat = data.StructLayout({
    "data": unsigned(8 * BEAT_BYTES),  # byte k in bits 8k .. 8k + 7 (little-endian)
    "last": unsigned(1),  # the frame's last beat
})
"""16 bytes of a frame. A frame is a multiple of 64 bytes, so every beat is full."""


def _align(nbytes, width):
    """``nbytes`` rounded up to a multiple of ``SECTION`` (an Amaranth value)."""
    return ((nbytes + (SECTION - 1)) >> 6 << 6)[:width]


class FrameBuilder(wiring.Component):
    """Assemble one frame per job.

    Ports (all ``lib.stream``; ``valid``/``payload`` never depend on ``ready``):

    - ``header``: the header template, bytes ``[0, hlen)`` of format.md 2.1 (fixed part, shape,
      table, scale records) as ``CodeBeat``s, ``last`` on its final beat. ``hlen`` is a multiple
      of 8 (every header field list is); its ``payload_bytes`` field (bytes 24..31) is ignored
      and replaced by the count of payload bytes; ``nblocks`` (bytes 16..23) says how many index
      entries the job has. The host computes everything else (docs/card.md).
    - ``index``: one ``IndexEntry`` per block, in block order;
    - ``payload``: the blocks' bytes as ``CodeBeat``s (a block's last beat may be partial);
    - ``status``: sampled when the trailer is written (0: good; format.md 2.5);
    - ``o``: the frame as ``FrameBeat``s.

    A job ends when the header is in, ``nblocks`` entries are in and the payload bytes received
    equal the sum of the entries' lengths; then the frame streams out and the next job may start.
    The three inputs may run ahead into the next job: entries are taken only once ``nblocks`` is
    known and up to it, payload bytes only up to the lengths of the entries taken.
    Throughput: inputs one beat (or entry) a cycle while collecting; output 8 bytes a cycle (the
    CRC takes a 64-bit word per cycle; half the 16-byte beat rate, enough for coded frames, whose
    payload a lane produces at 1-3 bytes a cycle on activations), plus one cycle a frame before
    the header's CRC word and one before the trailer (each waits for the CRC to take the word
    before it). Latency: the whole job, then two cycles to the first output beat (one for the
    word stage in front of the CRC). Backpressure: ``o.ready`` low holds the output beat and the
    generator (the CRC and the memories' read addresses do not move); the inputs wait while a
    frame streams out. Capacity: ``max_header``, ``max_blocks`` and ``max_payload``
    bytes/entries, in block RAM with synchronous reads (memories sized at elaboration; each read
    address is the next cycle's word, so the registered read costs no cycle); a job that exceeds
    one sets ``overflow`` and its frame carries status 1 with the data that fitted (the host
    sizes jobs by ``frame_bound`` so this never happens in a well-behaved system).
    """

    def __init__(self, *, max_header: int = 1024, max_blocks: int = 1024,
                 max_payload: int = 64 * 1024):
        for name, value in (("max_header", max_header), ("max_blocks", max_blocks),
                            ("max_payload", max_payload)):
            if not isinstance(value, int) or value < SECTION or value % SECTION:
                raise ValueError(f"{name}: expected a positive multiple of {SECTION}, got "
                                 f"{value!r}")
        self.max_header, self.max_blocks, self.max_payload = max_header, max_blocks, max_payload
        super().__init__({
            "header": In(stream.Signature(CodeBeat)),
            "index": In(stream.Signature(IndexEntry)),
            "payload": In(stream.Signature(CodeBeat)),
            "status": In(32),
            "o": Out(stream.Signature(FrameBeat)),
            "overflow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rows_h = self.max_header // BEAT_BYTES
        rows_i = self.max_blocks // _ENTRIES_PER_ROW
        rows_p = self.max_payload // BEAT_BYTES
        m.submodules.mem_h = mem_h = Memory(shape=unsigned(_BEAT_BITS), depth=rows_h, init=[])
        m.submodules.mem_i = mem_i = Memory(shape=unsigned(_BEAT_BITS), depth=rows_i, init=[])
        m.submodules.mem_p = mem_p = Memory(shape=unsigned(_BEAT_BITS), depth=rows_p, init=[])
        wh, wi, wp = mem_h.write_port(), mem_i.write_port(), mem_p.write_port()
        # Synchronous reads (block RAM): every port's address is the word counter's next value,
        # so each row is on the port's data in the cycle ``off`` reaches it and stays there while
        # the output stalls (the address does not move then).
        rh, ri, rp = mem_h.read_port(), mem_i.read_port(), mem_p.read_port()

        # ------------------------------------------------------------------ collect
        hlen = Signal(range(self.max_header + 1))  # header template bytes received
        h_done = Signal()
        nblocks = Signal(64)
        n_index = Signal(64)  # entries received
        expected = Signal(32)  # sum of the entries' lengths
        received = Signal(32)  # payload bytes received
        i_row = Signal(_BEAT_BITS)  # index entries being packed into a memory row
        p_acc = Signal(2 * _BEAT_BITS)  # payload bytes not yet written: the low ``p_fill`` bytes
        p_fill = Signal(range(BEAT_BYTES))
        p_rows = Signal(range(rows_p + 1))
        overflow = Signal()
        collecting = Signal(init=1)
        job_done = Signal()
        m.d.comb += self.overflow.eq(overflow)

        nb_known = Signal()  # the header's nblocks field is in
        entries_in = Signal()  # every entry of this job is in: later ones belong to the next job
        m.d.comb += [
            entries_in.eq(nb_known & (n_index == nblocks)),
            self.header.ready.eq(collecting & ~h_done),
            # Entries only once nblocks is known, payload only for blocks whose entries are in:
            # the sources run ahead into the next job, and this keeps the jobs apart.
            self.index.ready.eq(collecting & nb_known & (n_index < nblocks)),
            self.payload.ready.eq(collecting & (received < expected)),
        ]
        with m.If(self.header.valid & self.header.ready):
            beat = self.header.payload
            row = hlen >> _BEAT_SHIFT
            with m.If(row < rows_h):
                m.d.comb += [wh.addr.eq(row), wh.data.eq(beat.data), wh.en.eq(1)]
            with m.Else():
                m.d.sync += overflow.eq(1)
            with m.If(row == _NB_ROW):
                fixed = view_at(FIXED_HEADER, beat.data, _NB_ROW * BEAT_BYTES)
                m.d.sync += [nblocks.eq(fixed.nblocks), nb_known.eq(1)]
            m.d.sync += [hlen.eq(hlen + beat.count), h_done.eq(beat.last)]
        with m.If(self.index.valid & self.index.ready):
            slot = n_index[:3]
            entry = self.index.payload.as_value()
            new_row = Signal(_BEAT_BITS)
            m.d.comb += new_row.eq(i_row | (entry << (slot * 16)))
            m.d.sync += [n_index.eq(n_index + 1),
                         expected.eq(expected + self.index.payload.length)]
            with m.If(slot == _ENTRIES_PER_ROW - 1):
                with m.If((n_index >> 3) < rows_i):
                    m.d.comb += [wi.addr.eq(n_index >> 3), wi.data.eq(new_row), wi.en.eq(1)]
                with m.Else():
                    m.d.sync += overflow.eq(1)
                m.d.sync += i_row.eq(0)
            with m.Else():
                m.d.sync += i_row.eq(new_row)
        with m.If(self.payload.valid & self.payload.ready):
            beat = self.payload.payload
            merged = Signal(2 * _BEAT_BITS)
            fill = Signal(range(2 * BEAT_BYTES))
            m.d.comb += [merged.eq(p_acc | (beat.data << (p_fill * 8))),
                         fill.eq(p_fill + beat.count)]
            m.d.sync += received.eq(received + beat.count)
            with m.If(fill >= BEAT_BYTES):
                with m.If(p_rows < rows_p):
                    m.d.comb += [wp.addr.eq(p_rows), wp.data.eq(merged[:_BEAT_BITS]),
                                 wp.en.eq(1)]
                with m.Else():
                    m.d.sync += overflow.eq(1)
                m.d.sync += [p_rows.eq(p_rows + 1), p_acc.eq(merged[_BEAT_BITS:]),
                             p_fill.eq(fill - BEAT_BYTES)]
            with m.Else():
                m.d.sync += [p_acc.eq(merged), p_fill.eq(fill)]
        m.d.comb += job_done.eq(collecting & h_done & entries_in & (received == expected))

        # ------------------------------------------------------------------ emit
        # One 8-byte word per step, in sections; ``off`` counts words within the section.
        hw = Signal(range(self.max_header // _WORD + 1))  # header words: hlen / 8
        h_words = Signal(range(self.max_header // _WORD + 9))  # A(hlen + 4) / 8
        i_words = Signal(range(self.max_blocks // 4 + 9))  # ceil(nblocks / 4)
        i_total = Signal.like(i_words)  # A(2 nblocks) / 8
        p_words = Signal(range(self.max_payload // _WORD + 9))  # ceil(payload / 8)
        p_total = Signal.like(p_words)  # A(payload) / 8
        total = Signal(64)  # frame length
        off = Signal(range(max(self.max_payload, self.max_header, self.max_blocks) // 2 + 16))
        off_next = Signal.like(off)  # what ``off`` becomes: the rows to read for next cycle
        m.d.comb += [off_next.eq(off), rh.addr.eq(off_next >> 1), ri.addr.eq(off_next >> 1),
                     rp.addr.eq(off_next >> 1)]
        m.d.sync += off.eq(off_next)
        word = Signal(64)
        feed = Signal()  # the word goes into the CRC
        produce = Signal()  # the generator has a word this cycle
        step = Signal()  # the generator hands ``word`` on this cycle
        last_word = Signal()
        status = Signal(32)

        # The word stage: each word is registered before the CRC and the gearbox take it, so
        # the memories' read data (slow out of block RAM) meets only the word's own mux. A word
        # made of the CRC (the header's CRC word, the trailer) waits until the stage holds no
        # word still to go into the CRC: one cycle each.
        s_word = Signal(64)
        s_feed, s_last, s_full = Signal(), Signal(), Signal()
        s_take = Signal()  # the gearbox takes the stage's word
        crc_settled = Signal()  # every word fed so far is in ``crc.crc``
        low = Signal(64)  # 2:1 gearbox: two words make a beat
        half = Signal()
        m.submodules.crc = crc = catalog.CRC32_ISCSI(data_width=64).create()
        m.d.comb += [
            s_take.eq(s_full & (~half | ~self.o.valid | self.o.ready)),
            step.eq(produce & (~s_full | s_take)),
            crc.data.eq(s_word), crc.valid.eq(s_take & s_feed),
            crc_settled.eq(~(s_full & s_feed)),
        ]
        with m.If(step):
            m.d.sync += [s_word.eq(word), s_feed.eq(feed), s_last.eq(last_word), s_full.eq(1)]
        with m.Elif(s_take):
            m.d.sync += s_full.eq(0)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(s_take):
            with m.If(~half):
                m.d.sync += [low.eq(s_word), half.eq(1)]
            with m.Else():
                m.d.sync += [self.o.payload.data.eq(Cat(low, s_word)),
                             self.o.payload.last.eq(s_last), self.o.valid.eq(1),
                             half.eq(0)]

        def half_of(row_data, index):
            return Mux(index[0], row_data[64:], row_data[:64])

        with m.FSM():
            with m.State("COLLECT"), m.If(job_done):
                m.d.sync += [
                    collecting.eq(0),
                    hw.eq(hlen >> 3),
                    h_words.eq(_align(hlen + HEADER_CRC_BYTES, 32) >> 3),
                    i_words.eq((nblocks + 3) >> 2),
                    i_total.eq(_align(nblocks * 2, 40) >> 3),
                    p_words.eq((received + 7) >> 3),
                    p_total.eq(_align(received, 40) >> 3),
                    total.eq(_align(hlen + HEADER_CRC_BYTES, 32) + _align(nblocks * 2, 40)
                             + _align(received, 40) + TRAILER.size),
                ]
                m.d.comb += off_next.eq(0)
                # the last partly filled rows
                with m.If(n_index[:3] != 0):
                    m.d.comb += [wi.addr.eq(n_index >> 3), wi.data.eq(i_row), wi.en.eq(1)]
                with m.If(p_fill != 0):
                    m.d.comb += [wp.addr.eq(p_rows), wp.data.eq(p_acc[:_BEAT_BITS]), wp.en.eq(1)]
                m.d.comb += crc.start.eq(1)
                m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += produce.eq((off != hw) | crc_settled)
                with m.If(off < hw):  # payload_bytes as counted
                    m.d.comb += [word.eq(Mux(off == _PAYLOAD_WORD, received,
                                             half_of(rh.data, off))),
                                 feed.eq(1)]
                with m.Elif(off == hw):
                    m.d.comb += word.eq(crc.crc)  # header CRC, then zero padding
                with m.If(step):
                    m.d.comb += off_next.eq(off + 1)
                    with m.If(off + 1 == h_words):
                        m.d.comb += [off_next.eq(0), crc.start.eq(1)]
                        m.next = "INDEX"
            # Body sections: ``words`` words from memory, zero words to ``total``, all into the
            # body CRC; an empty section is skipped without a word. Entries past nblocks in
            # the index's last row are zero (the row was packed from 0), so are payload bytes.
            def body_section(name, read, words, total, then, on_leave=()):
                with m.State(name):
                    m.d.comb += [feed.eq(1), produce.eq(total != 0)]
                    with m.If(off < words):
                        m.d.comb += word.eq(half_of(read.data, off))
                    with m.If((total == 0) | (step & (off + 1 == total))):
                        m.d.comb += off_next.eq(0)
                        m.d.sync += on_leave
                        m.next = then
                    with m.Elif(step):
                        m.d.comb += off_next.eq(off + 1)

            body_section("INDEX", ri, i_words, i_total, "PAYLOAD")
            body_section("PAYLOAD", rp, p_words, p_total, "TRAILER",
                         [status.eq(self.status | overflow)])
            with m.State("TRAILER"):
                trailer = Signal(TRAILER.shape())
                m.d.comb += [produce.eq(crc_settled), trailer.body_crc.eq(crc.crc),
                             trailer.status.eq(status), trailer.length.eq(total),
                             word.eq(trailer.as_value().word_select(
                                 off[:(TRAILER.size // _WORD - 1).bit_length()], 64)),
                             last_word.eq(off == TRAILER.size // _WORD - 1)]
                with m.If(step):
                    m.d.comb += off_next.eq(off + 1)
                    with m.If(last_word):
                        m.d.comb += off_next.eq(0)
                        m.d.sync += [
                            collecting.eq(1), hlen.eq(0), h_done.eq(0), nb_known.eq(0),
                            nblocks.eq(0), n_index.eq(0), expected.eq(0), received.eq(0),
                            i_row.eq(0), p_acc.eq(0), p_fill.eq(0), p_rows.eq(0),
                            overflow.eq(0),
                        ]
                        m.next = "COLLECT"
        return m
