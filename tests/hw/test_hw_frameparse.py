"""FrameParser: parameters, and the Verilator run of sim/test_frameparse.py (frames of every mode
and a corrupted copy per check, back to back under stalls, against ``parse_frame``)."""

import pytest

from actpack.hw.frameparse import FrameParser
from actpack.sim.build import build


@pytest.mark.parametrize("kwargs", [{"max_blocks": 0}, {"max_blocks": 6}, {"max_blocks": 8.0},
                                    {"max_groups": 0}, {"max_groups": "1"}])
def test_capacities_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FrameParser(**kwargs)


def test_frames_and_corruptions_match_the_reference(verilator, seed):
    sim = build(FrameParser, name="frameparse", params={"max_blocks": 1024, "max_groups": 256})
    sim.run("actpack.sim.test_frameparse",
            env={"ACTPACK_TB_SEED": str(seed), "ACTPACK_TB_MAX_BLOCKS": "1024"})
