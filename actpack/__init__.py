"""actpack: train neural networks in less memory by compressing the activations autograd saves.

Public API::

    import actpack
    codec = actpack.Codec(mode="dct", table="optH")
    frame = codec.compress(activation)        # bytes(frame) is the wire/storage form
    restored = codec.decompress(frame)        # same shape, dtype and device
"""

from actpack.codec import Codec, Frame, decompress
from actpack.errors import FrameError

__all__ = ["Codec", "Frame", "FrameError", "decompress"]
__version__ = "0.1.0"
