"""Where saved tensors are compressed and restored: the ``device=`` seam of ``actpack.offload``.

A ``Device`` turns a tensor into an ``actpack.Frame`` with a given ``Codec`` setting and back.
``"ref"`` is the software codec (``actpack.Codec``, torch backend; CPU kernels that release the
GIL, or CUDA). The card's driver (``host.card.CardDevice``, docs/card.md) plugs in under its own
names:

- ``"xdma"`` / ``"xdma:<prefix>"``: a PCIe card through the Xilinx XDMA character devices;
- ``"model"``: the card's behavioural model (``host.cardmodel``) behind the same driver;
- ``"sim"``: the RTL card (``hw.card.Card``) under Verilator in a separate process;
- ``"serial:<port>"``: an ECP5 board's card over its USB-UART (``host.serialcard``).

All are built on the register-level transport of the design (``reg_read``/``reg_write``,
``submit``/``receive``) and give the same frames as ``"ref"``, byte for byte. ``open_device(spec)``
opens one by name; a new device registers a factory with ``register_device(name, factory)``;
``offload(device=...)`` also takes a ``Device`` object directly (tests use this to inject faults).
The ``Device`` contract and ``RefDevice`` are defined in ``refdevice`` (the card's driver uses
them, and this module opens the card: the imports go one way) and exported from here.
"""

from __future__ import annotations

from collections.abc import Callable

from . import card
from .errors import DeviceUnavailableError, UnknownDeviceError
from .refdevice import Device, RefDevice

__all__ = ["Device", "RefDevice", "device_names", "open_device",
           "register_device", "resolve_device"]


def _xdma() -> Device:
    return open_device("xdma")


def _model() -> Device:
    return open_device("model")


def _sim() -> Device:
    return open_device("sim")


_FACTORIES: dict[str, Callable[[], Device]] = {"ref": RefDevice, "xdma": _xdma, "model": _model,
                                               "sim": _sim}


def register_device(name: str, factory: Callable[[], Device]) -> None:
    """Make ``offload(device=name)`` build its device with ``factory()``. For the card's
    drivers; registering an existing name replaces it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name: expected an identifier-like string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    _FACTORIES[name] = factory


def device_names() -> tuple[str, ...]:
    """The names ``offload(device=...)`` accepts now."""
    return tuple(sorted(_FACTORIES))


def open_device(spec: str = "ref", *, fallback: bool = False, **options) -> Device:
    """A device by name: ``"ref"`` (the software codec, default), ``"xdma"`` or
    ``"xdma:<prefix>"`` (a card through the XDMA nodes ``<prefix>_user``/``_h2c_0``/``_c2h_0``,
    prefix ``/dev/xdma0`` by default), ``"model"`` (the card's behavioural model in-process),
    ``"sim"`` (the RTL card under Verilator: slow, for checking), ``"serial:<port>"`` (an ECP5
    board's card over its USB-UART, e.g. ``"serial:/dev/ttyUSB1"``), or any name given to
    ``register_device``.

    ``device.compress(tensor, codec)`` gives the bytes of ``codec.compress(tensor)`` whatever the
    device, and ``device.decompress(frame)`` the same tensor. ``options`` go to the card driver
    (e.g. ``timeout=`` seconds). ``fallback=True`` wraps a card in ``FallbackDevice``: a card
    fault (or no card at all) logs a warning and the reference codec does the job.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a device name such as 'ref' or 'xdma:/dev/xdma0', got "
                        f"{type(spec).__name__}")
    name, sep, arg = spec.partition(":")
    if name == "serial":
        return _open_serial(spec, arg, fallback, options)
    if name in ("xdma", "model", "sim"):
        opener = {"xdma": lambda: card.open_xdma(arg or "/dev/xdma0", **options),
                  "model": lambda: card.open_model(**options),
                  "sim": lambda: card.open_sim(**options)}[name]
        if sep and name != "xdma":
            raise UnknownDeviceError(f"device {name!r} takes no argument; 'xdma:<prefix>' does")
        try:
            dev = opener()
        except (DeviceUnavailableError, card.CardError) as exc:  # absent, foreign or dead
            if not fallback:
                raise
            card.log.warning("device %r is unavailable (%s); using 'ref'", spec, exc)
            return RefDevice()
        return card.FallbackDevice(dev) if fallback else dev
    if sep or options:
        what = "argument" if sep else f"options {sorted(options)}"
        raise UnknownDeviceError(f"device {name!r} takes no {what}; 'xdma:<prefix>' does")
    return resolve_device(name)


def _open_serial(spec: str, port: str, fallback: bool, options: dict) -> Device:
    """``"serial:<port>"``: a ``CardDevice`` over ``host.serialcard.SerialTransport``."""
    from .serialcard import open_serial

    try:
        dev = open_serial(port, **options)
    except (DeviceUnavailableError, card.CardError) as exc:
        if not fallback:
            raise
        card.log.warning("device %r is unavailable (%s); using 'ref'", spec, exc)
        return RefDevice()
    return card.FallbackDevice(dev) if fallback else dev


def resolve_device(device) -> Device:
    """``device=`` as a ``Device``: a registered name or an object with compress/decompress."""
    if isinstance(device, str) and ":" in device:
        return open_device(device)
    if isinstance(device, str):
        factory = _FACTORIES.get(device)
        if factory is not None:
            return factory()
        known = ", ".join(repr(n) for n in device_names())
        raise UnknownDeviceError(f"device: unknown device {device!r}; expected one of {known} "
                                 "or a Device object")
    if isinstance(device, Device):
        return device
    raise TypeError(f"device: expected a device name or an object with compress() and "
                    f"decompress(), got {type(device).__name__}")
