"""The activation codec: one definition (the numpy model), one fast path (torch), one format."""

from actpack.codec.codec import Codec, Frame, decompress

__all__ = ["Codec", "Frame", "decompress"]
