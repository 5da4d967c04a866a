"""actpack: train neural networks in less memory by compressing the activations autograd saves.

Public API::

    import actpack
    codec = actpack.Codec(mode="dct", table="optH")
    frame = codec.compress(activation)        # bytes(frame) is the wire/storage form
    restored = codec.decompress(frame)        # same shape, dtype and device

Names are imported on first use (PEP 562), so ``import actpack.codec.reference`` or
``import actpack.hw`` does not pull in torch: simulator processes and the gateware generator
stay light.
"""

import importlib

__all__ = ["Codec", "Frame", "FrameError", "decompress"]
__version__ = "0.1.0"

_EXPORTS = {
    "Codec": "actpack.codec.codec",
    "Frame": "actpack.codec.codec",
    "decompress": "actpack.codec.codec",
    "FrameError": "actpack.errors",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'actpack' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
