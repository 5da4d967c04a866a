"""Named errors: unknown devices, corrupted frames, faulty devices, tensors changed in place."""

from __future__ import annotations

import pytest
import torch
from offload_testlib import batch, conv_relu_pool, grads

import actpack
from actpack import Policy
from actpack.host import Device, RefDevice, device_names, register_device


class CorruptingDevice(RefDevice):
    """The reference device, but frames of tensors of ``shape`` are stored with a flipped
    payload byte: a stored frame gone bad."""

    name = "corrupting"

    def __init__(self, shape):
        self.shape = tuple(shape)

    def compress(self, tensor, codec):
        frame = super().compress(tensor, codec)
        if tuple(tensor.shape) != self.shape:
            return frame
        data = bytearray(bytes(frame))
        data[len(data) // 2] ^= 0x40
        return actpack.Frame(bytes(data), device=frame.device)


class WrongShapeDevice(RefDevice):
    """Restores every tensor flattened: shape no longer matches the handle."""

    name = "wrong-shape"

    def decompress(self, frame, *, device):
        return super().decompress(frame, device=device).reshape(-1)


class WrongDtypeDevice(RefDevice):
    name = "wrong-dtype"

    def decompress(self, frame, *, device):
        return super().decompress(frame, device=device).double()


class WrongDeviceDevice(RefDevice):
    name = "wrong-device"

    def decompress(self, frame, *, device):
        return super().decompress(frame, device=device).to("meta")


def test_ref_is_the_default_and_a_device():
    assert "ref" in device_names()
    session = actpack.offload()
    assert session.device.name == "ref" and isinstance(session.device, Device)


def test_unknown_device_is_named():
    with pytest.raises(actpack.UnknownDeviceError, match=r"unknown device 'gpu9'.*'ref'"):
        actpack.offload(device="gpu9")
    with pytest.raises(ValueError):  # UnknownDeviceError is a ValueError too
        actpack.offload(device="nope")
    with pytest.raises(TypeError, match="device"):
        actpack.offload(device=3)


def test_devices_that_are_not_there_say_why(tmp_path):
    prefix = tmp_path / "xdma0"  # no card here: its nodes do not exist
    with pytest.raises(actpack.DeviceUnavailableError, match=r"'xdma'.*does not exist"):
        actpack.offload(device=f"xdma:{prefix}")


def test_registered_device_is_used():
    calls = []

    class Counting(RefDevice):
        name = "counting"

        def compress(self, tensor, codec):
            calls.append(codec.mode)
            return super().compress(tensor, codec)

    register_device("counting_test", Counting)
    try:
        session = actpack.offload(device="counting_test")
        grads(conv_relu_pool(), batch(), session)
        assert session.device.name == "counting" and "mask" in calls
    finally:
        from actpack.host import device as devmod

        devmod._FACTORIES.pop("counting_test")


def test_corrupted_stored_frame_raises_frame_error_naming_the_layer():
    model, x = conv_relu_pool(), batch()
    # relu1's output (8x8x32x32) is stored as mask + sfpr8: both frames are corrupted.
    dev = CorruptingDevice((8, 8, 32, 32))
    with actpack.offload(device=dev), pytest.raises(actpack.FrameError) as exc:
        (model(x) ** 2).mean().backward()
    msg = str(exc.value)
    assert "layer 'relu1'" in msg and "corrupted" in msg
    assert isinstance(exc.value.__cause__, actpack.FrameError)


def test_corrupted_frame_found_by_a_prefetch_is_reported_the_same():
    model, x = conv_relu_pool(), batch()
    dev = CorruptingDevice((8, 3, 32, 32))  # conv1's input, the last tensor backward reads
    with actpack.offload(device=dev, prefetch=8), pytest.raises(actpack.FrameError,
                                                                match="layer 'conv1'"):
        (model(x) ** 2).mean().backward()


@pytest.mark.parametrize("device, what", [(WrongShapeDevice(), r"restored as \(\d+,\)"),
                                          (WrongDtypeDevice(), "torch.float64"),
                                          (WrongDeviceDevice(), "on meta")])
def test_unpack_checks_shape_dtype_device(device, what):
    model, x = conv_relu_pool(), batch()
    with actpack.offload(device=device), pytest.raises(actpack.UnpackMismatchError,
                                                       match=what) as exc:
        (model(x) ** 2).mean().backward()
    assert "layer '" in str(exc.value) and "was saved" in str(exc.value)


def test_handle_is_small_and_names_its_layer():
    packed = []
    model, x = conv_relu_pool(), batch()
    session = actpack.offload()
    original = session._pack

    def spy(t):
        h = original(t)
        packed.append(h)
        return h

    session._pack = spy  # the hooks are bound when the session is entered
    with session:
        out = model(x)
    handles = [h for h in packed if not isinstance(h, torch.Tensor)]
    assert handles and all(type(h).__name__ == "_Handle" for h in handles)
    assert not hasattr(handles[0], "__dict__")  # slots only: a few pointers
    assert "layer 'relu1'" in repr(next(h for h in handles if h.record.info.layer == "relu1"))
    (out ** 2).mean().backward()


def test_in_place_change_of_a_kept_saved_tensor_is_caught():
    a = torch.randn(3, requires_grad=True)
    with actpack.offload():
        b = a * 2
        c = b.sin()  # saves b (small: kept)
        b.add_(1)
        with pytest.raises(actpack.SavedTensorModifiedError, match="modified in place"):
            c.sum().backward()


def test_in_place_change_before_compression_is_caught():
    class Slow(RefDevice):
        def compress(self, tensor, codec):
            gate.wait(5)
            return super().compress(tensor, codec)

    import threading

    gate = threading.Event()
    a = torch.randn(256, 256, requires_grad=True)
    with actpack.offload(device=Slow(), policy=Policy(min_bytes=0), workers=2):
        b = a * 2
        c = b.sin()  # saves b; its compression waits for the gate
        b.add_(1)
        gate.set()
        with pytest.raises(actpack.SavedTensorModifiedError, match="version 0 -> 1"):
            c.sum().backward()


def test_compression_failure_is_an_offload_error_naming_the_layer():
    class Broken(RefDevice):
        def compress(self, tensor, codec):
            raise RuntimeError("link down")

    model, x = conv_relu_pool(), batch()
    with actpack.offload(device=Broken()), pytest.raises(actpack.OffloadError,
                                                         match=r"layer '.*link down"):
        (model(x) ** 2).mean().backward()


@pytest.mark.parametrize("workers", [0, 2])
def test_in_place_change_after_compression_is_caught(workers):
    # The frame is made and the tensor released; autograd would still raise, so must offload.
    x = torch.randn(512, 512, requires_grad=True)
    w = torch.randn(512, 512, requires_grad=True)
    with actpack.offload(policy="sfpr8", workers=workers) as session:
        h = torch.sigmoid(x @ w)  # saves its output
        session.synchronize()
        assert session.stats.tensors[-1].mode == "sfpr8"
        h.mul_(2)
        with pytest.raises(actpack.SavedTensorModifiedError, match="version 0 -> 1"):
            h.sum().backward()


def test_in_place_change_through_a_view_after_compression_is_caught():
    # Views share the saved tensor's version counter; the saved tensor object itself is gone.
    x = torch.randn(512, 512, requires_grad=True)
    with actpack.offload(policy="sfpr8") as session:
        h = torch.sigmoid(x)
        out = h.sum()
        row = h[3]
        del h
        session.synchronize()
        row.zero_()
        with pytest.raises(actpack.SavedTensorModifiedError, match="modified in place"):
            out.backward()


def test_in_place_change_of_a_tensor_passed_through_is_caught():
    # Tensors offload does not store (here: saved during backward, by double backward's first
    # pass: sin's backward computes cos(h), which saves h) keep autograd's version check.
    x = torch.randn(300, requires_grad=True)
    with actpack.offload():
        h = x * 1
        (g,) = torch.autograd.grad(h.sin().sum(), h, create_graph=True)  # g = cos(h)
        h.mul_(2)
        with pytest.raises(actpack.SavedTensorModifiedError, match="saved outside"):
            g.sum().backward()
