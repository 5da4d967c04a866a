"""The card behind a serial line: ``SerialLink`` (the link packets of ``hw.linkproto`` to the
card's AXI4-Lite bus and AXI4-Stream ports) and ``SerialCard`` (a ``Card`` behind one).

ECP5 boards have no open PCIe core; their host link is the board's FTDI USB-UART, and
``SerialLink`` gives the host over it what the XDMA core gives it on a PCIe card: register reads
and writes, and the job streams both ways (``host.serialcard.SerialTransport`` is the driver's
side).
"""

import contextlib

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axis import axis_layout, check_stream_bytes, thermometer
from .blockdecode import popcount
from .card import Card
from .linkproto import (
    CRC_BYTES,
    HEADER_BYTES,
    LINK_HEADER,
    REPLY_SYNC,
    REQUEST_SYNC,
    LinkError,
    LinkFlags,
    LinkOp,
    link_word,
)
from .regfile import AXI4Lite
from .regs import REG_SPACE, CardConfig
from .uart import UARTRx, UARTTx, check_divisor

__all__ = ["BUS_TIMEOUT_CYCLES", "SerialCard", "SerialLink"]

RX_FIFO_BYTES = 512  # received bytes held while a request executes (more than a reply's)
BUS_TIMEOUT_CYCLES = 255  # a register access the bus leaves unanswered this long is NAK BUS
_ADDR_BITS = (REG_SPACE - 1).bit_length()


class SerialLink(wiring.Component):
    """Link packets (``hw.linkproto``) on a UART (``rx``/``tx``) to a card's ports: ``bus``
    (AXI4-Lite master), ``h2c`` (AXI4-Stream out), ``c2h`` (AXI4-Stream in), of ``stream_bytes``
    bytes.

    Parameters: ``divisor`` (clock cycles per bit, ``hw.uart``), ``max_payload`` (bytes of an
    H2C or C2H packet's payload, a power of two of 16..4096), ``gap_cycles`` (a packet whose
    bytes stop this long is answered ``NAK SHORT``; after a NAK the link drops bytes until the
    line has been quiet this long), ``stream_bytes``.

    Storage: a receive FIFO of ``RX_FIFO_BYTES`` (a request that arrives while the previous
    reply is still going out waits there; a host that sends on without waiting for replies loses
    bytes once it is full, which the CRC and gap checks then report); an H2C ring of ``2 *
    max_payload`` entries (a byte and its ``tlast``), written as a packet arrives and committed
    when its CRC checks, so ``H2C_READY`` (room for a whole packet) lets the host send the next
    packet while the last one streams into the card; a C2H FIFO of ``max_payload`` bytes filled
    from ``c2h``, holding at most one message end (the tail of the next message waits until the
    host has read it), both synchronous-read memories (block RAM).

    Contract: one reply per request, in order (the reply's CRC32C, header and payload as in
    ``hw.linkproto``); a request's execution waits for the previous reply's end. ``h2c`` carries
    exactly the H2C payload bytes, in order, ``tlast`` on the final byte of a ``LAST`` packet;
    ``c2h`` bytes leave in order with ``LAST`` on the reply that ends a message. Throughput: the
    UART's (``10 * divisor`` cycles a byte each way); ``h2c`` gets a byte every 2 cycles,
    ``c2h`` is taken a byte a cycle.
    """

    def __init__(self, *, divisor: int, max_payload: int = 256, gap_cycles: int = 100_000,
                 stream_bytes: int = 8):
        if (isinstance(max_payload, bool) or not isinstance(max_payload, int)
                or max_payload < 16 or max_payload > 4096 or max_payload & (max_payload - 1)):
            raise ValueError(f"max_payload: a power of two of 16..4096 bytes, got "
                             f"{max_payload!r}")
        if isinstance(gap_cycles, bool) or not isinstance(gap_cycles, int) or gap_cycles < 1:
            raise ValueError(f"gap_cycles: a positive int, got {gap_cycles!r}")
        self.divisor = divisor
        self.max_payload, self.gap_cycles = max_payload, gap_cycles
        self.stream_bytes = check_stream_bytes(stream_bytes)
        check_divisor(divisor)
        if gap_cycles < 20 * divisor:
            raise ValueError(f"gap_cycles: {gap_cycles} is under two characters "
                             f"({20 * divisor} cycles at divisor {divisor})")
        layout = axis_layout(self.stream_bytes)
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "bus": Out(AXI4Lite()),
            "h2c": Out(stream.Signature(layout)), "c2h": In(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.stream_bytes
        depth = 2 * self.max_payload
        ptr_bits = depth.bit_length()  # one wrap bit over the ring's address
        m.submodules.urx = urx = UARTRx(divisor=self.divisor)
        m.submodules.utx = utx = UARTTx(divisor=self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        m.submodules.rx_crc = rx_crc = catalog.CRC32_ISCSI(data_width=8).create()
        m.submodules.tx_crc = tx_crc = catalog.CRC32_ISCSI(data_width=8).create()
        m.submodules.ring = ring = Memory(shape=unsigned(9), depth=depth, init=[])
        ring_w = ring.write_port()
        ring_r = ring.read_port()  # synchronous: block RAM
        m.submodules.c2h_fifo = cfifo = fifo.SyncFIFOBuffered(width=9, depth=self.max_payload)

        # received bytes wait here while a request executes (its reply may still be going out)
        m.submodules.rx_fifo = rfifo = fifo.SyncFIFOBuffered(width=8, depth=RX_FIFO_BYTES)
        m.d.comb += [rfifo.w_data.eq(urx.o.payload), rfifo.w_en.eq(urx.o.valid)]
        byte_in = rfifo.r_rdy  # a byte for the request receiver, taken where it is used
        b = rfifo.r_data

        # ------------------------------------------------------------ the line's quiet time
        quiet = Signal(range(self.gap_cycles + 1))
        gap = quiet == self.gap_cycles
        with m.If(urx.o.valid):
            m.d.sync += quiet.eq(0)
        with m.Elif(~gap):
            m.d.sync += quiet.eq(quiet + 1)

        # ------------------------------------------------------------ H2C ring -> h2c
        w_commit = Signal(ptr_bits)  # bytes committed (wrapping), the forwarder reads below it
        r_ptr = Signal(ptr_bits)
        used = Signal(ptr_bits)
        m.d.comb += used.eq(w_commit - r_ptr)
        h2c_ready = (depth - used) >= self.max_payload
        beat = Signal(8 * n)
        beat_j = Signal(range(n))
        beat_valid, beat_last = Signal(), Signal()
        beat_keep = Signal(n)
        m.d.comb += [ring_r.addr.eq(r_ptr[:ptr_bits - 1]),
                     self.h2c.valid.eq(beat_valid),
                     self.h2c.payload.data.eq(beat), self.h2c.payload.keep.eq(beat_keep),
                     self.h2c.payload.last.eq(beat_last)]
        with m.If(self.h2c.valid & self.h2c.ready):
            m.d.sync += [beat_valid.eq(0), beat.eq(0)]
        with m.FSM(name="fwd"):
            with m.State("IDLE"), m.If((r_ptr != w_commit) & ~beat_valid):
                m.d.sync += r_ptr.eq(r_ptr + 1)
                m.next = "BYTE"
            with m.State("BYTE"):  # ring_r.data is the entry at the old r_ptr
                entry = ring_r.data
                m.d.sync += beat.word_select(beat_j, 8).eq(entry[:8])
                with m.If(entry[8] | (beat_j == n - 1)):
                    m.d.sync += [beat_valid.eq(1), beat_last.eq(entry[8]), beat_j.eq(0),
                                 beat_keep.eq(thermometer(beat_j + 1, n))]
                with m.Else():
                    m.d.sync += beat_j.eq(beat_j + 1)
                m.next = "IDLE"

        # ------------------------------------------------------------ c2h -> C2H FIFO
        c_data = Signal(8 * n)
        c_count = Signal(range(n + 1))
        c_last, c_valid = Signal(), Signal()
        c_j = Signal(range(n))
        holds_last = Signal()  # a message's final byte is in the FIFO
        m.d.comb += self.c2h.ready.eq(~c_valid)
        with m.If(self.c2h.valid & self.c2h.ready):
            p = self.c2h.payload
            m.d.sync += [c_data.eq(p.data), c_last.eq(p.last), c_valid.eq(1), c_j.eq(0),
                         c_count.eq(Mux(p.last, popcount(p.keep), n))]
        end_byte = c_j + 1 >= c_count
        m.d.comb += [cfifo.w_data.eq(Cat(c_data.word_select(c_j, 8), c_last & end_byte)),
                     cfifo.w_en.eq(c_valid & ~holds_last & (c_count != 0))]
        with m.If(c_valid & (c_count == 0)):
            m.d.sync += c_valid.eq(0)  # an empty beat (not sent by BeatsToAxis): nothing to keep
        with m.If(cfifo.w_en & cfifo.w_rdy):
            m.d.sync += c_j.eq(c_j + 1)
            with m.If(end_byte):
                m.d.sync += c_valid.eq(0)
                with m.If(c_last):
                    m.d.sync += holds_last.eq(1)
        c2h_read_last = cfifo.r_en & cfifo.r_rdy & cfifo.r_data[8]
        with m.If(c2h_read_last):
            m.d.sync += holds_last.eq(0)

        # ------------------------------------------------------------ reply transmitter
        tx_start = Signal()
        tx_op, tx_seq, tx_arg = Signal(8), Signal(8), Signal(32)
        tx_len = Signal(range(self.max_payload + 1))
        tx_last = Signal()  # the reply's C2H bytes end a message
        tx_busy = Signal()
        tx_hdr = Signal(LINK_HEADER.shape())
        tx_k = Signal(range(max(HEADER_BYTES, self.max_payload) + 1))
        tx_crc_word = Signal(32)
        with m.FSM(name="tx"):
            with m.State("IDLE"), m.If(tx_start):
                more = cfifo.level > Mux(tx_op == LinkOp.C2H, tx_len, 0)
                m.d.sync += [
                    tx_hdr.eq(0), tx_hdr.sync.eq(REPLY_SYNC), tx_hdr.op.eq(tx_op),
                    tx_hdr.seq.eq(tx_seq), tx_hdr.arg.eq(tx_arg), tx_hdr.length.eq(tx_len),
                    tx_hdr.flags.eq(Mux(h2c_ready, LinkFlags.H2C_READY, 0)
                                    | Mux(tx_last, LinkFlags.LAST, 0)
                                    | Mux(more, LinkFlags.C2H_MORE, 0)),
                    tx_k.eq(0)]
                m.d.comb += tx_crc.start.eq(1)
                m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [tx_busy.eq(1), utx.i.valid.eq(1),
                             utx.i.payload.eq(tx_hdr.as_value().word_select(tx_k, 8)),
                             tx_crc.data.eq(utx.i.payload), tx_crc.valid.eq(utx.i.ready)]
                with m.If(utx.i.ready):
                    m.d.sync += tx_k.eq(tx_k + 1)
                    with m.If(tx_k == HEADER_BYTES - 1):
                        m.d.sync += tx_k.eq(0)
                        m.next = "PAYLOAD"  # which ends at once without bytes
            with m.State("PAYLOAD"):
                m.d.comb += tx_busy.eq(1)
                with m.If(tx_k == tx_hdr.length):
                    m.next = "SEAL"
                with m.Else():
                    m.d.comb += [utx.i.valid.eq(cfifo.r_rdy), utx.i.payload.eq(cfifo.r_data[:8]),
                                 cfifo.r_en.eq(utx.i.ready),
                                 tx_crc.data.eq(utx.i.payload),
                                 tx_crc.valid.eq(utx.i.ready & cfifo.r_rdy)]
                    with m.If(utx.i.ready & cfifo.r_rdy):
                        m.d.sync += tx_k.eq(tx_k + 1)
            with m.State("SEAL"):  # the CRC register has taken the last byte
                m.d.comb += tx_busy.eq(1)
                m.d.sync += [tx_crc_word.eq(tx_crc.crc), tx_k.eq(0)]
                m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [tx_busy.eq(1), utx.i.valid.eq(1),
                             utx.i.payload.eq(tx_crc_word.word_select(tx_k[:2], 8))]
                with m.If(utx.i.ready):
                    m.d.sync += tx_k.eq(tx_k + 1)
                    with m.If(tx_k == CRC_BYTES - 1):
                        m.next = "IDLE"

        # ------------------------------------------------------------ request receiver
        hdr = Signal(LINK_HEADER.shape())
        k = Signal(range(max(HEADER_BYTES, self.max_payload, CRC_BYTES) + 1))
        wvalue = Signal(32)
        space_ok = Signal()  # H2C: the ring has room for this packet
        nak = Signal(8)  # the NAK to send
        nak_discard = Signal()  # after the NAK, drop bytes until the line is quiet
        bus_timer = Signal(range(BUS_TIMEOUT_CYCLES + 1))
        op = hdr.op
        length = hdr.length
        want0 = (op == LinkOp.PING) | (op == LinkOp.REG_READ) | (op == LinkOp.C2H)
        length_ok = Mux(want0, length == 0,
                        Mux(op == LinkOp.REG_WRITE, length == 4, length != 0))
        op_ok = want0 | (op == LinkOp.REG_WRITE) | (op == LinkOp.H2C)

        def reply(rop, arg, *, length=0, last=0):
            m.d.sync += [tx_op.eq(rop), tx_seq.eq(hdr.seq), tx_arg.eq(arg), tx_len.eq(length),
                         tx_last.eq(last)]

        def send_nak(code, *, discard):
            m.d.sync += [nak.eq(code), nak_discard.eq(discard)]
            m.next = "NAK"

        m.d.comb += [rx_crc.data.eq(b), ring_w.data.eq(Cat(b, hdr.flags[1] & (k == length - 1))),
                     ring_w.addr.eq((w_commit + k)[:ptr_bits - 1]),
                     self.bus.araddr.eq(hdr.arg[:_ADDR_BITS]),
                     self.bus.awaddr.eq(hdr.arg[:_ADDR_BITS]),
                     self.bus.wdata.eq(wvalue), self.bus.wstrb.eq(0xF)]
        with m.FSM(name="rx"):
            with m.State("HUNT"), m.If(byte_in):
                m.d.comb += rfifo.r_en.eq(1)
                with m.If(b == REQUEST_SYNC):
                    m.d.comb += [rx_crc.start.eq(1), rx_crc.valid.eq(1)]
                    m.d.sync += [hdr.eq(b), k.eq(1)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(byte_in):
                    m.d.comb += [rx_crc.valid.eq(1), rfifo.r_en.eq(1)]
                    m.d.sync += [hdr.as_value().word_select(k, 8).eq(b), k.eq(k + 1)]
                    with m.If(k == HEADER_BYTES - 1):
                        m.d.sync += k.eq(0)
                        m.next = "CHECK_LENGTH"
                with m.Elif(gap):
                    send_nak(LinkError.SHORT, discard=1)
            with m.State("CHECK_LENGTH"):
                with m.If(length > self.max_payload):
                    send_nak(LinkError.LENGTH, discard=1)
                with m.Else():
                    m.d.sync += space_ok.eq((depth - used) >= length)
                    m.next = "BODY"
            with m.State("BODY"):
                with m.If(k == length):
                    m.d.sync += k.eq(0)
                    m.next = "TRAILER"
                with m.Elif(byte_in):
                    m.d.comb += [rx_crc.valid.eq(1), rfifo.r_en.eq(1),
                                 ring_w.en.eq((op == LinkOp.H2C) & space_ok)]
                    m.d.sync += [k.eq(k + 1), wvalue.eq(Cat(wvalue[8:], b))]
                with m.Elif(gap):
                    send_nak(LinkError.SHORT, discard=1)
            with m.State("TRAILER"):
                with m.If(k == CRC_BYTES):
                    m.d.sync += k.eq(0)
                    m.next = "CHECK"
                with m.Elif(byte_in):
                    m.d.comb += [rx_crc.valid.eq(1), rfifo.r_en.eq(1)]
                    m.d.sync += k.eq(k + 1)
                with m.Elif(gap):
                    send_nak(LinkError.SHORT, discard=1)
            with m.State("CHECK"):  # the CRC register has taken the last byte
                # the reply to the previous request is out first (the C2H level is then the
                # bytes this reply can carry)
                with m.If(tx_busy):
                    pass
                with m.Elif(~rx_crc.match_detected):
                    send_nak(LinkError.CRC, discard=1)
                with m.Elif(~op_ok):
                    send_nak(LinkError.BAD_OP, discard=0)
                with m.Elif(~length_ok):
                    send_nak(LinkError.LENGTH, discard=0)
                with m.Elif((op == LinkOp.H2C) & ~space_ok):
                    send_nak(LinkError.BUSY, discard=0)
                with m.Else():
                    m.d.sync += bus_timer.eq(0)
                    with m.Switch(op):
                        with m.Case(LinkOp.PING):
                            reply(LinkOp.PING, link_word(self.max_payload))
                            m.next = "REPLY"
                        with m.Case(LinkOp.REG_READ):
                            m.next = "BUS_AR"
                        with m.Case(LinkOp.REG_WRITE):
                            m.next = "BUS_AW"
                        with m.Case(LinkOp.H2C):
                            m.d.sync += w_commit.eq(w_commit + length)
                            reply(LinkOp.H2C, 0)
                            m.next = "REPLY"
                        with m.Case(LinkOp.C2H):
                            m.next = "C2H"

            @contextlib.contextmanager
            def bus_wait(done):
                # one AXI-Lite handshake: the body runs when it completes; NAK BUS past the limit
                m.d.sync += bus_timer.eq(bus_timer + 1)
                with m.If(done):
                    yield
                with m.Elif(bus_timer == BUS_TIMEOUT_CYCLES):
                    send_nak(LinkError.BUS, discard=0)

            with m.State("BUS_AR"):
                m.d.comb += self.bus.arvalid.eq(1)
                with bus_wait(self.bus.arready):
                    m.next = "BUS_R"
            with m.State("BUS_R"):
                m.d.comb += self.bus.rready.eq(1)
                with bus_wait(self.bus.rvalid):
                    reply(LinkOp.REG_READ, self.bus.rdata)
                    m.next = "REPLY"
            with m.State("BUS_AW"):
                # the register file takes AW and W together (hw.regfile)
                m.d.comb += [self.bus.awvalid.eq(1), self.bus.wvalid.eq(1)]
                with bus_wait(self.bus.awready & self.bus.wready):
                    m.next = "BUS_B"
            with m.State("BUS_B"):
                m.d.comb += self.bus.bready.eq(1)
                with bus_wait(self.bus.bvalid):
                    reply(LinkOp.REG_WRITE, 0)
                    m.next = "REPLY"
            with m.State("C2H"):
                # the bytes there now, up to the request's arg; LAST if they end a message
                # (the FIFO holds at most one message end, as its final entry)
                level = cfifo.level
                want = Mux(hdr.arg > self.max_payload, self.max_payload, hdr.arg)
                take = Mux(want < level, want, level)
                reply(LinkOp.C2H, 0, length=take, last=holds_last & (take == level))
                m.next = "REPLY"
            with m.State("REPLY"), m.If(~tx_busy):
                m.d.comb += tx_start.eq(1)
                m.next = "HUNT"
            with m.State("NAK"), m.If(~tx_busy):
                m.d.sync += [tx_op.eq(LinkOp.NAK), tx_seq.eq(hdr.seq), tx_arg.eq(nak),
                             tx_len.eq(0), tx_last.eq(0)]
                m.next = "NAK_SEND"
            with m.State("NAK_SEND"):
                m.d.comb += tx_start.eq(1)
                m.next = "DISCARD_OR_HUNT"
            with m.State("DISCARD_OR_HUNT"):
                m.d.comb += rfifo.r_en.eq(nak_discard)  # dropped
                with m.If(~nak_discard | (gap & ~byte_in)):
                    m.next = "HUNT"
        return m


class SerialCard(wiring.Component):
    """A ``Card`` behind a ``SerialLink``: the board top's logic, with the UART pins ``rx`` (in)
    and ``tx`` (out) as its only ports.

    Parameters: ``config`` (``CardConfig``; its ``caps.stream_bytes`` is the link's AXIS width),
    ``max_groups``, ``max_blocks`` (as ``Card``), ``divisor``, ``max_payload``, ``gap_cycles``
    (as ``SerialLink``); ``card``: a component with the card's ports to use instead of a
    ``Card`` of ``config`` (e.g. ``sim.loopback.LoopbackCard``, H2C echoed to C2H, for a
    link-only bring-up build).
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, *, config: CardConfig, divisor: int, max_groups: int = 256,
                 max_blocks: int = 4096, max_payload: int = 256, gap_cycles: int = 100_000,
                 card=None):
        self.card = card if card is not None else Card(config=config, max_groups=max_groups,
                                                       max_blocks=max_blocks)
        self.link = SerialLink(divisor=divisor, max_payload=max_payload, gap_cycles=gap_cycles,
                               stream_bytes=config.caps.stream_bytes)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.card = card = self.card
        m.submodules.link = link = self.link
        wiring.connect(m, link.bus, card.bus)
        wiring.connect(m, link.h2c, card.h2c)
        wiring.connect(m, card.c2h, link.c2h)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        return m
