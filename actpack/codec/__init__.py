"""The activation codec: one definition (the numpy model), one fast path (torch), one format.

``Codec``, ``Frame`` and ``decompress`` are imported on first use, so the torch-free modules
(``spec``, ``tables``, ``frame``, ``reference``) import without torch.
"""

import importlib

__all__ = ["Codec", "Frame", "decompress"]


def __getattr__(name: str):
    if name in __all__:
        value = getattr(importlib.import_module("actpack.codec.codec"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'actpack.codec' has no attribute {name!r}")
