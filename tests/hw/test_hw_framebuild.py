"""FrameBuilder: parameters, and the Verilator run of sim/test_framebuild.py (frames of every
mode through the builder, byte-equal to ``build_frame``, under stalls)."""

import pytest

from actpack.hw.framebuild import FrameBuilder
from actpack.sim.build import build


@pytest.mark.parametrize("name", ["max_header", "max_blocks", "max_payload"])
@pytest.mark.parametrize("value", [0, 100, -64, 64.0])
def test_capacities_must_be_multiples_of_a_section(name, value):
    with pytest.raises(ValueError, match=name):
        FrameBuilder(**{name: value})


def test_frames_are_byte_equal_to_the_reference(verilator, seed):
    sim = build(FrameBuilder, name="framebuild",
                params={"max_header": 1024, "max_blocks": 1024, "max_payload": 16384})
    sim.run("actpack.sim.test_framebuild", env={"ACTPACK_TB_SEED": str(seed)})
