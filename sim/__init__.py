"""cocotb testbenches that check the generated Verilog against actpack.codec.reference.

Not built yet: tracked in the gateware issue.
"""
