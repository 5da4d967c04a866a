"""``dsp.RegisteredMultiply``: parameters, which variant each platform gets, and under Verilator
the MULT18X18D instance (on ``sim/mult18x18d.v``) against the behavioural variant cycle by cycle
(sim/test_dsp.py), including a broken top that must fail."""

import os
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import signed, unsigned

from actpack.hw.dsp import RegisteredMultiply, uses_ecp5_dsp
from actpack.hw.synth import OUT_OF_CONTEXT_ECP5
from actpack.sim.build import SimulationFailed, build
from actpack.sim.test_dsp import DspPairs

MODEL = Path(__file__).resolve().parents[2] / "sim" / "mult18x18d.v"
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")


@pytest.mark.parametrize("a, b, kw, match", [
    (unsigned(19), unsigned(8), {}, "a_shape"), (unsigned(8), signed(19), {}, "b_shape"),
    (unsigned(8), signed(8), {}, "both unsigned or both signed"),
    (unsigned(8), unsigned(8), {"stages": 3}, "stages"),
])
def test_bad_parameters(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        RegisteredMultiply(a, b, **kw)


def test_product_shape():
    assert RegisteredMultiply(unsigned(17), unsigned(8)).p.shape() == unsigned(25)
    assert RegisteredMultiply(signed(18), signed(18)).p.shape() == signed(36)


def test_variant_by_platform():
    """ECP5 (synth's platform, or any with family "ecp5") gets the MULT18X18D with its input and
    output registers on CLK0 and CE0; no platform or another family gets Yosys' $mul."""

    class Xilinx:
        family = "series7"

    assert uses_ecp5_dsp(OUT_OF_CONTEXT_ECP5) and not uses_ecp5_dsp(None)
    assert not uses_ecp5_dsp(Xilinx())
    for stages, inputs in ((2, "CLK0"), (1, "NONE")):
        text = rtlil.convert(RegisteredMultiply(unsigned(18), unsigned(12), stages=stages),
                             platform=OUT_OF_CONTEXT_ECP5, emit_src=False)
        assert text.count("cell \\MULT18X18D") == 1 and "$mul" not in text
        for param, value in (("REG_INPUTA_CLK", inputs), ("REG_INPUTB_CLK", inputs),
                             ("REG_OUTPUT_CLK", "CLK0"), ("REG_PIPELINE_CLK", "NONE"),
                             ("REG_OUTPUT_CE", "CE0"), ("RESETMODE", "SYNC")):
            assert f'parameter \\{param} "{value}"' in text
    for platform in (None, Xilinx()):
        text = rtlil.convert(RegisteredMultiply(unsigned(18), unsigned(12)), platform=platform,
                             emit_src=False)
        assert "MULT18X18D" not in text and text.count("cell $mul") == 1


@pytest.mark.parametrize("fault", [None, "ce"])
def test_instance_matches_behaviour(verilator, seed, fault):
    """Random operands, enables and resets for every ``CONFIGS`` pair; with the instances' clock
    enable held high (``fault="ce"``) the same testbench must fail."""
    sim = build(DspPairs, name="dsp_pairs" + (f"_{fault}" if fault else ""),
                params={"fault": fault}, sources=[MODEL])
    env = {"ACTPACK_TB_SEED": str(seed)}
    if fault is None:
        sim.run("actpack.sim.test_dsp", seed=seed, env=env)
        return
    with pytest.raises(SimulationFailed, match="instance"):
        sim.run("actpack.sim.test_dsp", seed=seed, env=env)
