"""Gateware generator (Amaranth HDL) for the compression/decompression accelerator.

Not built yet: tracked in the gateware issue. The codec it must reproduce lives in actpack.codec.
"""
