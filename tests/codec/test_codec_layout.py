"""The wire layouts: the struct formats docs/format.md and docs/card.md give, field by name."""

import struct

import pytest

from actpack.codec.frame import (
    FIXED_HEADER,
    SCALE_RECORD,
    TRAILER,
    Header,
    frame_length,
    groups_of,
    header_length,
)
from actpack.codec.layout import Field, Layout, in_enum
from actpack.codec.spec import DType, Mode, Scale, geometry

# The formats as written before the layouts existed: the layouts must keep every byte.
_FORMATS = {FIXED_HEADER: "<4sHBBBBBBIQQd", SCALE_RECORD: "<Hhf", TRAILER: "<IIQ48s"}


@pytest.mark.parametrize("layout", list(_FORMATS), ids=lambda lay: lay.name)
def test_frame_layouts_keep_their_formats(layout):
    assert layout.struct.format == _FORMATS[layout]
    assert layout.size == struct.calcsize(_FORMATS[layout])


def test_protocol_layouts_keep_their_formats():
    from actpack.hw.protocol import DESCRIPTOR, STATUS

    assert DESCRIPTOR.struct.format == "<4sBBBBBBHIQdIIQ12sI"
    assert STATUS.struct.format == "<4sIIIQQI24sI"
    assert DESCRIPTOR.offset("in_bytes") == 40 and DESCRIPTOR.offset("crc") == 60


def test_pack_by_name_and_reserved_fields():
    lay = Layout("T", [Field("a", "H"), Field("pad", "2s", reserved=True), Field("b", "i")])
    assert lay.pack(a=1, b=-2) == struct.pack("<H2si", 1, b"\0\0", -2)
    assert lay.unpack_from(lay.pack(a=7, b=3)).a == 7
    assert (lay.offset("b"), lay.end("b"), lay.size) == (4, 8, 8)
    with pytest.raises(TypeError, match="missing"):
        lay.pack(a=1)
    with pytest.raises(TypeError, match="no field"):
        lay.pack(a=1, b=2, c=3)


def test_shape_matches_struct():
    pytest.importorskip("amaranth")
    for lay in _FORMATS:
        shape = lay.shape()
        assert shape.size == 8 * lay.size
        for f in lay.fields:
            assert shape[f.name].offset == 8 * lay.offset(f.name)
    assert SCALE_RECORD.shape()["exponent"].shape.signed


@pytest.mark.parametrize("mode", list(Mode))
def test_header_length_and_groups(mode):
    shape = (3, 17, 9)
    geo = geometry(shape)
    scales = (Scale(1 << 15, -15),) * groups_of(mode, geo.groups)
    table = [1] * 64 if mode is Mode.DCT else None
    head = Header(mode, DType.FLOAT32, shape, 0.0, table=table, scales=scales).to_bytes()
    hlen = header_length(mode, len(shape), len(scales))
    assert len(head) == -(-(hlen + 4) // 64) * 64 and any(head[hlen - 4:hlen + 4])
    assert frame_length(hlen, 0, 0) == len(head) + TRAILER.size
    assert in_enum(int(mode), Mode) and not in_enum(0, Mode) and not in_enum(len(Mode) + 1, Mode)
