"""Host driver and PyTorch offload.

``actpack.offload`` compresses the tensors autograd saves for backward (module ``offload``),
choosing a codec setting per tensor (``policy``), on a device behind one small protocol
(``device``: "ref", the software codec; "xdma" and "model" for the card; "sim" later), and
reports what it stored (``stats``). The card's driver: ``card`` (``CardDevice``,
``FallbackDevice``) over a ``transport`` (``xdma``, or the behavioural ``cardmodel``); see
docs/card.md and ``open_device``.
"""

from .adaptive import AdaptivePolicy
from .card import CardDevice, FallbackDevice
from .device import Device, RefDevice, device_names, open_device, register_device
from .errors import (
    CardCapabilityError,
    CardError,
    CardFrameError,
    CardMismatchError,
    CardProtocolError,
    CardTimeoutError,
    CompileWarning,
    DeviceUnavailableError,
    OffloadError,
    SavedTensorModifiedError,
    UnknownDeviceError,
    UnpackMismatchError,
)
from .gradcheck import GradientCheck, gradient_check
from .offload import OffloadSession, offload
from .plan import BudgetError, Plan, PlanEntry, plan
from .policy import OPS, Policy, Rule, SavedInfo
from .stats import LayerStats, Stats, TensorStats

__all__ = [
    "OPS",
    "AdaptivePolicy",
    "BudgetError",
    "CardCapabilityError",
    "CardDevice",
    "CardError",
    "CardFrameError",
    "CardMismatchError",
    "CardProtocolError",
    "CardTimeoutError",
    "CompileWarning",
    "Device",
    "DeviceUnavailableError",
    "FallbackDevice",
    "GradientCheck",
    "LayerStats",
    "OffloadError",
    "OffloadSession",
    "Plan",
    "PlanEntry",
    "Policy",
    "RefDevice",
    "Rule",
    "SavedInfo",
    "SavedTensorModifiedError",
    "Stats",
    "TensorStats",
    "UnknownDeviceError",
    "UnpackMismatchError",
    "device_names",
    "gradient_check",
    "offload",
    "open_device",
    "plan",
    "register_device",
]
