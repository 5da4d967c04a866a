"""Shared test configuration."""

import os

import torch

# Two cores: keep torch from oversubscribing when pytest-xdist runs two workers.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
