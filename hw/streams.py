"""Stream plumbing shared by the engines: a transfer's sides as plain signals (``Port``),
broadcast to several sinks (``fork``), joining several sources into one (``join``) and an output
behind a skid register (``skid``), keeping Amaranth's stream rule (a ``valid`` never depends on
a ``ready``)."""

from amaranth.hdl import Cat, Module, Mux, Signal

__all__ = ["Port", "fork", "join", "skid"]


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
