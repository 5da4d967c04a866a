"""cocotb testbenches that check the generated Verilog against actpack.codec.reference.

- ``build``: converts a component to Verilog and compiles it with Verilator once per
  configuration (``build/sim/<name>-<hash>/``, cached across runs and pytest-xdist workers);
  ``SimBuild.run`` runs a cocotb test module on it.
- ``stream``: stream driver/monitor for Amaranth's port naming, with idle/backpressure inserters.
- ``stimulus``: random, real-ish and edge-case blocks.
- ``test_dct``, ``test_quant``: the testbenches (cocotb modules, run from tests/hw/).
"""
