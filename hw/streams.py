"""Stream plumbing shared by the engines: a transfer's sides as plain signals (``Port``),
broadcast to several sinks (``fork``), joining several sources into one (``join``), an output
behind a skid register (``skid``) and a queue between parts placed apart, with places reserved
ahead of their words for credit flow control (``Queue``, ``queue_rows``), keeping Amaranth's
stream rule (a ``valid`` never depends on a ``ready``)."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["Port", "Queue", "fork", "join", "queue_rows", "room", "skid", "write_late"]

# The least depth of a chain's output queue: a 16-word LUT RAM cell holds it.
_LUT_RAM_ROWS = 16


class Port:
    """valid / payload / ready of one side of a transfer, plain signals or a stream interface."""

    def __init__(self, valid, payload, ready):
        self.valid, self.payload, self.ready = valid, payload, ready


def fork(m: Module, src, sinks, name: str):
    """Broadcast ``src`` (valid, ready) to ``sinks``: each sink sees ``valid`` until it has taken
    the item; ``src.ready`` once all have. Sink ``valid`` depends on registers and ``src.valid``
    only (never on a ``ready``)."""
    taken = [Signal(name=f"{name}_taken{k}") for k in range(len(sinks))]
    done = [t | s.ready for t, s in zip(taken, sinks, strict=True)]
    all_done = Signal(name=f"{name}_done")
    m.d.comb += [all_done.eq(Cat(*done).all()), src.ready.eq(all_done)]
    for t, s, d in zip(taken, sinks, done, strict=True):
        m.d.comb += s.valid.eq(src.valid & ~t)
        with m.If(src.valid):
            m.d.sync += t.eq(~all_done & d)


def join(m: Module, sources, sink):
    """``sink`` takes one item of every source at once (valid when all are)."""
    valids = [s.valid for s in sources]
    m.d.comb += sink.valid.eq(Cat(*valids).all())
    for k, s in enumerate(sources):
        others = Cat(*(v for j, v in enumerate(valids) if j != k)).all()
        m.d.comb += s.ready.eq(sink.ready & others)


def write_late(m: Module, fifo, write, value, name: str):
    """Write ``value`` into ``fifo`` (anything with ``w_en``/``w_data``: a ``Queue`` with
    reserved places, a FIFO with room kept by ``room``) a cycle after ``write``, from registers:
    the decision reaches no memory write enable."""
    value = Value.cast(value)  # (``len`` of an array view counts its elements, not bits)
    w, d = Signal(name=f"{name}_w"), Signal(len(value), name=f"{name}_d")
    m.d.sync += [w.eq(write), d.eq(value)]
    m.d.comb += [fifo.w_en.eq(w), fifo.w_data.eq(d)]


def room(m: Module, fifo, name: str, *, margin: int = 1) -> Signal:
    """A register: ``fifo``'s ``level`` was below ``depth - margin`` in the last cycle. With one
    write a cycle at most, ``margin = 1`` means the FIFO (a ``SyncFIFO``) can take a word now,
    whatever was written in the last cycle; each cycle a write may come later than its decision
    (``write_late``) and each word the FIFO counts in ``level`` but cannot take (a
    ``SyncFIFOBuffered``'s output register) adds 1. So a ``w_en`` decided from it depends on no
    compare of the level."""
    ok = Signal(name=f"{name}_room")
    m.d.sync += ok.eq(fifo.level < fifo.depth - margin)
    return ok


def skid(m: Module, port, payload, push, ready):
    """Drive stream ``port`` from ``payload`` on ``push`` through a skid register: ``ready``
    (a register) says a push is taken this cycle. So ``port.ready`` reaches only the output
    register and the skid, never the pusher's decision."""
    held = Signal.like(port.payload)
    held_valid = Signal()
    m.d.comb += ready.eq(~held_valid)
    with m.If(~held_valid):  # (whether or not pushed: the enable is a register)
        m.d.sync += held.eq(payload)
    with m.If(~port.valid | port.ready):
        m.d.sync += port.valid.eq(held_valid | push)
        m.d.sync += port.payload.eq(Mux(held_valid, held, payload))
        m.d.sync += held_valid.eq(0)
    with m.Elif(push):
        m.d.sync += held_valid.eq(1)


class Queue(wiring.Component):
    """A first-word fall-through FIFO of ``depth`` (a power of 2) words of ``width`` bits whose
    writer and reader share no logic, for a writer and a reader placed apart: each side keeps
    its own pointer and a copy of the other side's a cycle late, and its flags are registers
    (``w_rdy``, ``r_rdy``). So neither side's decision reaches the other's in the cycle it is
    taken: a word is readable ``latency`` cycles after its write, and its place free again 2
    cycles after its read (conservative flags: never a lost or invented word). The read side:

    - ``read="comb"``: ``r_data`` is the memory read combinationally at the head pointer (a
      register, so ``r_en`` reaches no memory address; LUT RAM); ``latency`` = ``LATENCY``;
    - ``read="sync"``: ``r_data`` is a register, the memory read synchronously from the next
      head address (for narrow words: ``r_en`` reaches the address); ``latency`` = ``LATENCY``;
    - ``read="prefetch"``: for deep wide queues in block RAM (``block_ram``). Words
      are fetched from the memory into a ring of ``HEAD_WORDS`` registers ahead of the reader,
      from registers only (the fetch pointer, a late copy of the writer's, the ring's room), so
      ``r_en`` reaches neither the memory nor its address. The memory's read data (about
      4.3 ns clock to output) reaches only a register without an enable, placed beside the
      block RAM (the ring's registers, loaded by slot, were placed 2-3 ns away), which loads the
      ring a cycle later. ``r_data`` is the ring's head (a ``HEAD_WORDS``:1 select of
      registers). One word a cycle in steady flow; ``latency`` = ``PREFETCH_LATENCY`` (fetch,
      memory read, that register, ring); a place is free again once its word is fetched.

    With ``reserve`` (a number of places), places are taken ahead of their words: ``reserve``
    (while ``w_rdy``: that many places are free) takes the next ``reserve`` places, and ``w_en``
    writes the words into the reserved places in order, without a check (the writer has
    reserved them). Without it, ``w_en`` (while ``w_rdy``) does both. ``block_ram``: the memory
    is asked for block RAM (``ram_style="block"``; read "sync" or "prefetch"), else the tools
    choose (LUT RAM for the shallow queues here)."""

    LATENCY = 3  # cycles from a word's write to its ``r_rdy`` (``read`` "comb" or "sync")
    PREFETCH_LATENCY = 5  # the same with ``read="prefetch"``
    # the least ring for a word a cycle: a word is fetched, one is on the memory's read data,
    # one in the register beside it, one to read
    HEAD_WORDS = 4

    def __init__(self, width: int, depth: int, *, reserve: int = 0, read: str = "comb",
                 block_ram: bool = False):
        if depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth: expected a power of 2 from 2 on, not {depth!r}")
        if not 0 <= reserve <= depth:
            raise ValueError(f"reserve: expected 0..{depth} places, not {reserve!r}")
        if read not in ("comb", "sync", "prefetch"):
            raise ValueError(f"read: expected 'comb', 'sync' or 'prefetch', not {read!r}")
        if block_ram and read == "comb":
            raise ValueError("block_ram: block RAM has no combinational read")
        self.depth, self.places, self.read, self.block_ram = depth, reserve, read, block_ram
        self.latency = self.PREFETCH_LATENCY if read == "prefetch" else self.LATENCY
        members = {"w_en": In(1), "w_data": In(width), "w_rdy": Out(1),
                   "r_en": In(1), "r_data": Out(width), "r_rdy": Out(1)}
        if reserve:
            members["reserve"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        n = self.depth.bit_length() - 1
        attrs = {"ram_style": "block"} if self.block_ram else None
        m.submodules.mem = mem = Memory(shape=len(self.w_data), depth=self.depth, init=[],
                                        attrs=attrs)
        wport = mem.write_port()
        rport = mem.read_port(domain="comb" if self.read == "comb" else "sync")

        def pointer(name, step, by=1):
            """A wrapping pointer (``n + 1`` bits) and itself + ``by``, both registers."""
            p, p1 = Signal(n + 1, name=name), Signal(n + 1, name=f"{name}_1", init=by)
            with m.If(step):
                m.d.sync += [p.eq(p1), p1.eq(p1 + by)]
            return p, p1

        def seen(p, name):  # the other side's copy, a cycle late
            s = Signal(n + 1, name=f"{name}_seen")
            m.d.sync += s.eq(p)
            return s

        def room(taken):  # a place (``reserve``: that many) free once ``taken`` are
            if self.places <= 1:
                return ~((taken[:n] == rseen[:n]) & (taken[n] != rseen[n]))  # not depth apart
            return (taken - rseen)[:n + 1] <= self.depth - self.places

        push = Signal()
        taking = Signal()  # a place is taken (reserved or written)
        pop = Signal()
        # the memory's head word leaves: popped, or with "prefetch" fetched into the ring
        step = Signal(name="fetch") if self.read == "prefetch" else pop
        m.d.comb += [pop.eq(self.r_en & self.r_rdy), push.eq(self.w_en)]
        if self.places:
            m.d.comb += taking.eq(self.reserve & self.w_rdy)
        else:
            m.d.comb += [push.eq(self.w_en & self.w_rdy), taking.eq(push)]
        wptr, wptr1 = pointer("wptr", push)
        rptr, rptr1 = pointer("rptr", step)
        if self.places:
            tptr, tptr1 = pointer("tptr", taking, self.places)
        else:
            tptr, tptr1 = wptr, wptr1
        rseen, wseen = seen(rptr, "rptr"), seen(wptr, "wptr")
        m.d.comb += [wport.addr.eq(wptr[:n]), wport.data.eq(self.w_data), wport.en.eq(push)]
        # places taken after this cycle, as far as the writer knows, leave room for more
        m.d.sync += self.w_rdy.eq(Mux(taking, room(tptr1), room(tptr)))
        if self.read == "prefetch":
            self._prefetch(m, rport, rptr, wseen, step, pop)
            return m
        m.d.comb += self.r_data.eq(rport.data)
        if self.read == "sync":
            m.d.comb += [rport.addr.eq(Mux(pop, rptr1, rptr)[:n]), rport.en.eq(1)]
        else:
            m.d.comb += rport.addr.eq(rptr[:n])
        m.d.sync += self.r_rdy.eq(Mux(pop, wseen != rptr1, wseen != rptr))
        return m

    def _prefetch(self, m, rport, rptr, wseen, fetch, pop):
        """The read side of ``read="prefetch"``: ``fetch`` (the memory word at ``rptr`` is read,
        ``rptr`` steps) while a written word is there and the ring has room counting the words
        on their way; the read data is registered a cycle later (``near``) and lands in the ring
        the cycle after."""
        b = self.HEAD_WORDS
        ring = [Signal(len(self.r_data), name=f"head{k}") for k in range(b)]
        w_slot, r_slot = Signal(range(b)), Signal(range(b))
        landing = Signal()  # a fetched word is on the memory's read data
        near = Signal(len(self.r_data), name="near")  # the read data, registered beside the RAM
        near_valid = Signal()  # a fetched word is in ``near``
        held = Signal(range(b + 1))  # ring words plus the two on their way
        ring_room = Signal(init=1)  # held < b, a register
        filled = Signal(range(b + 1))  # ring words
        n = self.depth.bit_length() - 1
        m.d.comb += [
            fetch.eq((wseen != rptr) & ring_room),
            rport.addr.eq(rptr[:n]), rport.en.eq(1),
            self.r_data.eq(Array(ring)[r_slot]),
        ]
        m.d.sync += [landing.eq(fetch), near.eq(rport.data), near_valid.eq(landing)]
        for k, word in enumerate(ring):
            with m.If(near_valid & (w_slot == k)):
                m.d.sync += word.eq(near)
        held_next = held + fetch - pop
        filled_next = filled + near_valid - pop
        m.d.sync += [held.eq(held_next), ring_room.eq(held_next < b),
                     filled.eq(filled_next), self.r_rdy.eq(filled_next != 0)]
        with m.If(near_valid):
            m.d.sync += w_slot.eq(Mux(w_slot == b - 1, 0, w_slot + 1))
        with m.If(pop):
            m.d.sync += r_slot.eq(Mux(r_slot == b - 1, 0, r_slot + 1))


def queue_rows(latency: int, queue_latency: int = Queue.LATENCY) -> int:
    """Rows of the ``Queue`` behind a chain of ``latency`` cycles for one row a cycle: a credit
    comes back ``latency + queue_latency + 3`` cycles after its row is admitted (the chain; the
    queue's write seen by its reader, ``queue_latency``; its read seen by the writer, 2; then
    ``w_rdy``); the least power of 2 from ``_LUT_RAM_ROWS`` on that covers it."""
    rows = _LUT_RAM_ROWS
    while rows < latency + queue_latency + 3:
        rows *= 2
    return rows
