"""cocotb testbench of ``dsp.RegisteredMultiply``: its MULT18X18D instance variant (run on
``sim/mult18x18d.v``, a model of the primitive) against its behavioural variant and a Python
model of both, cycle by cycle, with random operands, clock enables and resets.

``DspPairs`` (the top, built by tests/hw/test_hw_dsp.py) holds one pair per entry of
``CONFIGS``: the same ``RegisteredMultiply`` elaborated for ECP5 (``synth.OUT_OF_CONTEXT_ECP5``:
the instance) and with no platform (the behaviour), sharing ``en`` and the domain's reset.
``fault="ce"`` builds a broken top (the instances' clock enable held high) that the testbench
must reject. Environment: ``ACTPACK_TB_CYCLES`` (default 3000), ``ACTPACK_TB_SEED``.
"""

import os
import random

import cocotb
from amaranth.hdl import Elaboratable, Fragment, Module, Shape, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from ..hw.dsp import RegisteredMultiply
from ..hw.synth import OUT_OF_CONTEXT_ECP5

#: (a shape, b shape, stages): both signednesses, full and narrow operands, both stage counts.
CONFIGS = (
    (unsigned(18), unsigned(18), 2),
    (signed(18), signed(18), 2),
    (unsigned(17), unsigned(8), 2),  # Dequantizer's (2|q| + 1) Q
    (signed(5), signed(13), 2),
    (unsigned(18), unsigned(16), 1),  # FloatToFixed's M * m slices
    (signed(18), signed(18), 1),
)
FAULTS = (None, "ce")


class _ElaboratedFor(Elaboratable):
    """``inner`` elaborated for ``platform`` whatever its parent's platform is."""

    def __init__(self, inner, platform):
        self.inner, self.platform = inner, platform

    def elaborate(self, platform):
        return Fragment.get(self.inner, self.platform)


class DspPairs(wiring.Component):
    """Per ``CONFIGS`` entry k: inputs ``a_k``, ``b_k``; outputs ``inst_k`` (the MULT18X18D
    variant) and ``beh_k`` (the behavioural one); ``en`` drives every clock enable (``fault="ce"``:
    the instances' is held high instead)."""

    def __init__(self, *, fault=None):
        if fault not in FAULTS:
            raise ValueError(f"fault: expected one of {FAULTS}, not {fault!r}")
        self.fault = fault
        ports = {"en": In(1)}
        for k, (a, b, stages) in enumerate(CONFIGS):
            p = RegisteredMultiply(a, b, stages=stages).p.shape()
            ports.update({f"a_{k}": In(a), f"b_{k}": In(b), f"inst_{k}": Out(p),
                          f"beh_{k}": Out(p)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for k, (a, b, stages) in enumerate(CONFIGS):
            inst = RegisteredMultiply(a, b, stages=stages)
            beh = RegisteredMultiply(a, b, stages=stages)
            m.submodules[f"inst_{k}"] = _ElaboratedFor(inst, OUT_OF_CONTEXT_ECP5)
            m.submodules[f"beh_{k}"] = beh
            for mul in (inst, beh):
                m.d.comb += [mul.a.eq(getattr(self, f"a_{k}")), mul.b.eq(getattr(self, f"b_{k}"))]
            m.d.comb += [inst.en.eq(1 if self.fault == "ce" else self.en), beh.en.eq(self.en),
                         getattr(self, f"inst_{k}").eq(inst.p),
                         getattr(self, f"beh_{k}").eq(beh.p)]
        return m


def _operand(rng: random.Random, shape: Shape) -> int:
    """A random bit pattern of ``shape``, the extremes (0, all ones, the sign bit alone, its
    neighbours) a quarter of the time."""
    w = shape.width
    if rng.random() < 0.25:
        return rng.choice([0, 1, (1 << w) - 1, 1 << (w - 1), (1 << (w - 1)) - 1])
    return rng.getrandbits(w)


def _value(bits: int, shape: Shape) -> int:
    return bits - (1 << shape.width) if shape.signed and bits >> (shape.width - 1) else bits


class _Model:
    """``RegisteredMultiply`` in Python: operand registers (``stages=2``), product register,
    all cleared by reset, which wins over ``en``."""

    def __init__(self, a: Shape, b: Shape, stages: int, width: int):
        self.a, self.b, self.stages, self.mask = a, b, stages, (1 << width) - 1
        self.ra = self.rb = self.p = 0

    def clock(self, a: int, b: int, en: int, rst: int) -> None:
        if rst:
            self.ra = self.rb = self.p = 0
        elif en:
            x, y = (self.ra, self.rb) if self.stages == 2 else (a, b)
            self.p = (_value(x, self.a) * _value(y, self.b)) & self.mask
            self.ra, self.rb = a, b


@cocotb.test()
async def instance_matches_behaviour(dut):
    """Every cycle: the instance's product, the behavioural one and the Python model's are the
    same bits (and the products are not mostly zero: the stimulus reaches them)."""
    cycles = int(os.environ.get("ACTPACK_TB_CYCLES", "3000"))
    rng = random.Random(int(os.environ.get("ACTPACK_TB_SEED", "1")))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    models = [_Model(a, b, s, len(getattr(dut, f"beh_{k}")))
              for k, (a, b, s) in enumerate(CONFIGS)]
    dut.rst.value = 1
    dut.en.value = 0
    for k in range(len(CONFIGS)):
        getattr(dut, f"a_{k}").value = 0
        getattr(dut, f"b_{k}").value = 0
    await FallingEdge(dut.clk)
    for m in models:
        m.clock(0, 0, 0, 1)
    mismatches, nonzero = [], 0
    en_rate = 0.5
    for cycle in range(cycles):
        if cycle % 200 == 0:  # stretches of mostly stalled, mostly running and even enables
            en_rate = rng.choice([0.1, 0.5, 0.9, 1.0])
        en = int(rng.random() < en_rate)
        rst = int(rng.random() < 0.01)
        ops = [(_operand(rng, a), _operand(rng, b)) for a, b, _ in CONFIGS]
        dut.en.value, dut.rst.value = en, rst
        for k, (x, y) in enumerate(ops):
            getattr(dut, f"a_{k}").value = x
            getattr(dut, f"b_{k}").value = y
        await FallingEdge(dut.clk)
        for k, ((x, y), model) in enumerate(zip(ops, models, strict=True)):
            model.clock(x, y, en, rst)
            inst = int(getattr(dut, f"inst_{k}").value.to_unsigned())
            beh = int(getattr(dut, f"beh_{k}").value.to_unsigned())
            nonzero += model.p != 0
            if not inst == beh == model.p and len(mismatches) < 10:
                mismatches.append(f"cycle {cycle} config {k} {CONFIGS[k]}: instance {inst:#x}, "
                                  f"behaviour {beh:#x}, model {model.p:#x} (en {en}, rst {rst})")
    assert not mismatches, "\n".join(mismatches)
    assert nonzero > cycles * len(CONFIGS) // 2, f"only {nonzero} nonzero products"
