"""A registered multiply: operands registered, product registered, one clock enable, and on ECP5
one MULT18X18D holding all three registers itself.

Yosys' ``synth_ecp5`` maps ``a * b`` to a combinational MULT18X18D and leaves the registers an
Amaranth design writes around it in the fabric; nextpnr then places them where it likes, often
20-30 rows from the DSP, and the path fabric register -> DSP port -> product (~3.1 ns) -> fabric
register missed 150 MHz on every engine. Inside the MULT18X18D (Lattice FPGA-TN-02205, sysDSP:
input registers A and B, pipeline and output registers, each with a selectable clock, clock
enable and reset) the same registers leave only DSP-port <-> fabric routing on the fabric side.

``RegisteredMultiply`` is that block. Which variant it elaborates is chosen by the platform
``elaborate`` receives (``uses_ecp5_dsp``): an ECP5 platform (``platform.family == "ecp5"``,
as Amaranth's ``LatticePlatform`` for an LFE5 device and ``hw/synth.py``'s ``OUT_OF_CONTEXT_ECP5``
have) gets the ``MULT18X18D`` instance; anything else (``None`` in simulation and Verilog export,
a Xilinx platform) the behavioural registers and ``*``. Both have the same cycle behaviour,
which tests/hw/test_hw_dsp.py checks under Verilator against a model of the MULT18X18D subset
used here (``sim/mult18x18d.v``).
"""

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP_WIDTH", "STAGES", "RegisteredMultiply", "uses_ecp5_dsp"]

# Ref: Lattice FPGA-TN-02205 (ECP5 sysDSP), MULT18X18D: one 18 x 18-bit multiplier per block.
DSP_WIDTH = 18
#: ``RegisteredMultiply``'s ``stages``: 2, operands then product registered (the DSP's input and
#: output registers); 1, the product only (its output register). Its pipeline register, which
#: nextpnr-ecp5 does not time (its MULT18X18D timing classes know input and output registers
#: only), stays off either way.
STAGES = (1, 2)


def uses_ecp5_dsp(platform) -> bool:
    """True when ``platform`` (what ``elaborate`` receives) targets an ECP5: its ``family`` is
    ``"ecp5"``. ``None`` (simulation, Verilog export) and other vendors are False."""
    return getattr(platform, "family", None) == "ecp5"


class RegisteredMultiply(wiring.Component):
    """``p`` = ``a * b`` of the operands ``stages`` enabled cycles earlier. ``stages=2``
    (default): ``a`` and ``b`` registered in a cycle ``en`` is high, their product registered in
    the next cycle ``en`` is high (the same as two ``with m.If(en): m.d.sync += ...`` stages);
    ``stages=1``: the product of the current operands registered. Every register takes the
    ``sync`` domain's reset (synchronous, as Amaranth's default domain), which wins over ``en``.
    Throughput: one product a cycle; no backpressure of its own (``en`` stalls it).

    Parameters: ``a_shape``, ``b_shape``: the operands' shapes, 1 to ``DSP_WIDTH`` = 18 bits,
    both unsigned or both signed (a mixed product would need a 19-bit signed operand);
    ``stages``: 1 or 2 (``STAGES``). ``p``: ``a_shape`` times ``b_shape`` as Amaranth sizes it
    (``len(a) + len(b)`` bits, signed when the operands are). Bad parameters: ``ValueError``.

    On ECP5 (``uses_ecp5_dsp``): one MULT18X18D with ``REG_OUTPUT_CLK`` (and for ``stages=2``
    ``REG_INPUTA_CLK``, ``REG_INPUTB_CLK``) on ``CLK0``, the ``sync`` clock; clock enable
    ``CE0`` = ``en``; reset ``RST0`` = the domain's reset, ``RESETMODE`` ``SYNC``; ``SIGNEDA`` /
    ``SIGNEDB`` tied to the operands' signedness. nextpnr-ecp5 (``ecp5/pack.cc``) times such a
    block with ``MULT18X18D_REGS_ALL`` (``stages=2``) or ``MULT18X18D_REGS_OUTPUT``: its ports A
    and B are register inputs and P register outputs of CLK0, so for ``stages=2`` the
    multiplier's own delay lies inside the block and only the routes to and from it are timed.
    """

    def __init__(self, a_shape, b_shape, *, stages=2):
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        for label, shape in (("a_shape", a_shape), ("b_shape", b_shape)):
            if not 1 <= shape.width <= DSP_WIDTH:
                raise ValueError(f"{label}: {shape!r} is not 1..{DSP_WIDTH} bits wide (one "
                                 "MULT18X18D)")
        if a_shape.signed != b_shape.signed:
            raise ValueError(f"a_shape {a_shape!r} and b_shape {b_shape!r}: both unsigned or "
                             "both signed")
        if stages not in STAGES:
            raise ValueError(f"stages: expected one of {STAGES}, not {stages!r}")
        self.a_shape, self.b_shape, self.stages = a_shape, b_shape, stages
        p_shape = (Signal(a_shape) * Signal(b_shape)).shape()
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1), "p": Out(p_shape)})

    def elaborate(self, platform):
        m = Module()
        if not uses_ecp5_dsp(platform):
            a, b = self.a, self.b
            if self.stages == 2:
                a, b = Signal(self.a_shape), Signal(self.b_shape)
                with m.If(self.en):
                    m.d.sync += [a.eq(self.a), b.eq(self.b)]
            with m.If(self.en):
                m.d.sync += self.p.eq(a * b)
            return m
        ports = {}
        for name, value in (("A", self.a), ("B", self.b)):
            ext = Signal(DSP_WIDTH, name=f"{name.lower()}18")
            m.d.comb += ext.eq(value)  # sign or zero extension (by value's shape) to 18 bits
            ports.update({f"i_{name}{k}": ext[k] for k in range(DSP_WIDTH)})
        prod = Signal(2 * DSP_WIDTH)
        ports.update({f"o_P{k}": prod[k] for k in range(2 * DSP_WIDTH)})
        signed = int(self.a_shape.signed)
        operands = "CLK0" if self.stages == 2 else "NONE"
        m.submodules.mult = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK=operands, p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK=operands, p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_RESETMODE="SYNC",
            i_CLK0=ClockSignal("sync"), i_CE0=self.en,
            i_RST0=ResetSignal("sync", allow_reset_less=True),
            i_SIGNEDA=signed, i_SIGNEDB=signed, i_SOURCEA=0, i_SOURCEB=0,
            **ports)
        m.d.comb += self.p.eq(prod[:len(self.p)])
        return m
