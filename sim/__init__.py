"""cocotb testbenches that check the generated Verilog against actpack.codec.reference.

- ``build``: converts a component to Verilog and compiles it with Verilator once per
  configuration (``build/sim/<name>-<hash>/``, cached across runs and pytest-xdist workers);
  ``SimBuild.run`` runs a cocotb test module on it.
- ``stream``: stream driver/monitor for Amaranth's port naming, with idle/backpressure inserters.
- ``stimulus``: random, real-ish and edge-case blocks.
- ``card_server``: the card's RTL served over a Unix socket to ``host.simcard.SimTransport``;
  ``cardwire``: the wire protocol of both ends (no torch, no host driver: the server starts in
  every simulator run).
- ``test_dct``, ``test_quant``: the testbenches (cocotb modules, run from tests/hw/).
"""
