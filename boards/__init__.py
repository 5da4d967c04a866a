"""Board platforms and bitstream builds. Not built yet: tracked in the gateware issue."""
