"""FrameParser: parameters, and the Verilator run of sim/test_frameparse.py (frames of every mode
and a corrupted copy per check, back to back under stalls, against ``parse_frame``)."""

import pytest

from actpack.errors import Check
from actpack.hw.frameparse import FrameCheck, FrameParser, frame_check
from actpack.sim.build import build


@pytest.mark.parametrize("kwargs", [{"max_blocks": 0}, {"max_blocks": 6}, {"max_blocks": 8.0},
                                    {"max_groups": 0}, {"max_groups": "1"}])
def test_capacities_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FrameParser(**kwargs)


def test_frame_check_bits_are_derived_from_the_checks():
    """FrameCheck is Check's parser rows in order, each bit where the gateware has emitted it
    since the verdict was defined (card.py, the sim and recorded verdicts rely on it)."""
    assert [c.name for c in FrameCheck] == [
        "NOT_FRAME", "TRUNCATED_FIXED", "VERSION", "NDIM", "NGROUPS", "TRUNCATED_HEADER",
        "HEADER_CRC", "HEADER_PADDING", "MODE_DTYPE", "NUMEL", "TABLE_ZERO", "SCALE", "NBLOCKS",
        "GROUPS", "PARAM", "TRUNCATED", "TRAILING", "TRAILER_RESERVED", "BODY_CRC", "LENGTH",
        "STATUS", "INDEX_ENTRY", "INDEX_SUM", "CAPACITY"]
    assert [int(c) for c in FrameCheck] == list(range(24))
    bits = {frame_check(c) for c in Check} - {None}
    assert bits == set(FrameCheck) - {FrameCheck.CAPACITY}
    host = {c for c in Check if frame_check(c) is None}
    assert host == {Check.SCALE_INVERSE, Check.EB_SCALE} | {c for c in Check if c.block}
    assert frame_check(Check.VERSION_NEWER) is FrameCheck.VERSION


def test_frames_and_corruptions_match_the_reference(verilator, seed):
    sim = build(FrameParser, name="frameparse", params={"max_blocks": 1024, "max_groups": 256})
    sim.run("actpack.sim.test_frameparse",
            env={"ACTPACK_TB_SEED": str(seed), "ACTPACK_TB_MAX_BLOCKS": "1024"})
