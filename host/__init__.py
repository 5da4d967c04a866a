"""Host driver and PyTorch offload (transports: reference model, simulated card, XDMA).

Not built yet: tracked in the card/driver issue.
"""
