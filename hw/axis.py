"""AXI4-Stream as the card sees it: the data streams a PCIe DMA core (Xilinx XDMA in AXI-Stream
mode, LitePCIe) gives user logic, ``tdata`` of ``stream_bytes`` (8..64) bytes with ``tkeep`` and
``tlast``.

``axis_layout(stream_bytes)`` is the payload of an Amaranth ``lib.stream`` port (``valid`` /
``ready`` are the stream's own): the card's ``h2c`` and ``c2h`` ports use it, so their Verilog
ports are ``h2c__payload`` (``data``, ``keep``, ``last`` packed, data in the low bits),
``h2c__valid``, ``h2c__ready``. Byte ``k`` of a beat is ``data[8k:8k+8]`` (little-endian, as the
XDMA core maps host memory); ``keep`` bit ``k`` says byte ``k`` is there. The card accepts and
produces only beats whose kept bytes are the low ones, all of them except on a packet's last
beat (what XDMA's H2C engine emits for a single-buffer transfer, and what its C2H engine takes).
"""

from amaranth.hdl import unsigned
from amaranth.lib import data

__all__ = ["STREAM_BYTES", "axis_layout"]

STREAM_BYTES = (8, 16, 32, 64)  # tdata widths of 64 to 512 bits


def axis_layout(stream_bytes: int) -> data.StructLayout:
    """One AXI4-Stream beat of ``stream_bytes`` bytes: ``data``, ``keep``, ``last``."""
    if stream_bytes not in STREAM_BYTES:
        raise ValueError(f"stream_bytes: expected one of {STREAM_BYTES}, got {stream_bytes!r}")
    return data.StructLayout({"data": unsigned(8 * stream_bytes), "keep": unsigned(stream_bytes),
                              "last": unsigned(1)})
