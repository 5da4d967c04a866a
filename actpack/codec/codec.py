"""The public codec: ``Codec`` compresses tensors into ``Frame`` objects and back."""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from actpack.codec import reference, torchpath
from actpack.codec.frame import FIXED_HEADER, Header, parse_frame
from actpack.codec.spec import (
    ERROR_BOUND_RANGE,
    MAX_GROUPS,
    MAX_NUMEL,
    RANGE_MAX_LIMIT,
    RANGE_MIN_LIMIT,
    DType,
    Mode,
    nonzero_numel,
)
from actpack.codec.tables import resolve_table
from actpack.errors import Check, FrameError

__all__ = ["BACKENDS", "Codec", "Frame", "decompress"]

BACKENDS = ("torch", "numpy")


class Frame:
    """A compressed tensor. ``bytes(frame)`` is its wire and storage form; ``frame.nbytes`` its
    size. ``mode``, ``dtype``, ``shape`` are read from the header; ``device`` is where the tensor
    came from (not part of the bytes) and where ``decompress`` puts it back by default."""

    __slots__ = ("_data", "device")

    def __init__(self, data, *, device=None):
        self._data = bytes(data)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @classmethod
    def from_bytes(cls, data, *, device=None) -> Frame:
        """A frame from its bytes, fully validated (raises ``FrameError``)."""
        parse_frame(data)
        return cls(data, device=device)

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def _fixed(self):
        if len(self._data) < FIXED_HEADER.size:
            raise FrameError("truncated frame", check=Check.TRUNCATED_FIXED)
        return FIXED_HEADER.unpack_from(self._data)

    @property
    def mode(self) -> str:
        return Mode(self._fixed().mode).label

    @property
    def dtype(self) -> torch.dtype:
        return torchpath.TORCH_OF[DType(self._fixed().dtype)]

    @property
    def shape(self) -> torch.Size:
        ndim = self._fixed().ndim
        return torch.Size(struct.unpack_from(f"<{ndim}Q", self._data, FIXED_HEADER.size))

    def __repr__(self) -> str:
        return (f"Frame(mode={self.mode!r}, dtype={self.dtype}, shape={tuple(self.shape)}, "
                f"nbytes={self.nbytes})")


def _check_positive_float(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be finite and > 0, got {value}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


class Codec:
    """Activation codec. One definition, two implementations with identical bytes.

    Modes (keyword-only arguments):

    - ``Codec(mode="dct", table="optH", range_max=4.5)``: per-channel scaled fixed point (max |x|
      maps to ``range_max``, int8 with 5 fraction bits, saturating), 8x8 fixed-point DCT,
      quantization by ``table`` ("optL", "optH", "optsL", "optsH", "jpeg<Q>" or 64 integers),
      zigzag, zero-value and entropy coding.
    - ``Codec(mode="eb", error_bound=0.01)``: every finite element comes back within
      ``error_bound``; pre-quantization, 2-D Lorenzo prediction within each 8x8 block,
      zero-value and entropy coding.
    - ``Codec(mode="eb2", error_bound=0.01)``: the same bound; the Lorenzo predictor runs over
      the whole plane (across block edges), which makes the frames 3-15 % smaller on conv and
      ReLU activations (docs/format.md 6.6). Not implemented by the gateware yet.
    - ``Codec(mode="sfpr8", range_max=4.5)``: scaled fixed point + zero-value + entropy coding.
    - ``Codec(mode="mask")``: one bit per element; decompresses to 1 where the input was > 0,
      else 0.

    ``backend="torch"`` (default) is the fast path (CPU or CUDA); ``backend="numpy"`` runs the
    reference model. Non-finite values come back exactly (raw blocks) in every mode but "mask",
    which keeps only where x > 0.
    """

    def __init__(self, *, mode: str, table=None, range_max=None, error_bound=None,
                 backend: str = "torch"):
        self._mode = Mode.parse(mode)
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        m = self._mode
        if table is not None and m is not Mode.DCT:
            raise ValueError(f"table: only mode 'dct' takes a table, not mode {m.label!r}")
        if range_max is not None and m not in (Mode.DCT, Mode.SFPR8):
            raise ValueError(f"range_max: only modes 'dct' and 'sfpr8' take it, not {m.label!r}")
        if error_bound is not None and not m.error_bounded:
            raise ValueError(f"error_bound: only modes 'eb' and 'eb2' take it, not {m.label!r}")
        self.table_id, self.table_arg, self.table = 0, 0, None
        if m is Mode.DCT:
            self.table_id, self.table_arg, self.table = resolve_table(
                "optH" if table is None else table)
        self.range_max = None
        self.error_bound = None
        if m in (Mode.DCT, Mode.SFPR8):
            self.range_max = _check_positive_float(
                "range_max", 4.5 if range_max is None else range_max, RANGE_MIN_LIMIT,
                RANGE_MAX_LIMIT)
        if m.error_bounded:
            if error_bound is None:
                raise ValueError(f"error_bound: mode {m.label!r} needs an error bound, e.g. 0.01")
            self.error_bound = _check_positive_float("error_bound", error_bound,
                                                     *ERROR_BOUND_RANGE)

    @property
    def mode(self) -> str:
        return self._mode.label

    def __repr__(self) -> str:
        args = [f"mode={self.mode!r}"]
        if self.table is not None:
            args.append(f"table={self.table_name!r}")
        if self.range_max is not None:
            args.append(f"range_max={self.range_max}")
        if self.error_bound is not None:
            args.append(f"error_bound={self.error_bound}")
        return f"Codec({', '.join(args)})"

    @property
    def table_name(self) -> str | None:
        from actpack.codec.tables import TABLE_IDS

        if self.table is None:
            return None
        name = {v: k for k, v in TABLE_IDS.items()}[self.table_id]
        return f"jpeg{self.table_arg}" if name == "jpeg" else name

    def header(self, t: torch.Tensor) -> Header:
        """The frame header this codec writes for ``t`` (mode, dtype, shape, param, table); the
        card driver sends it with the job. Raises ``TypeError`` for an unsupported dtype."""
        param = {Mode.EB: self.error_bound, Mode.EB2: self.error_bound,
                 Mode.MASK: 0.0}.get(self._mode, self.range_max)
        return Header(self._mode, _dtype_of(t), tuple(t.shape), float(param), self.table_id,
                      self.table_arg, self.table)

    def compress(self, t: torch.Tensor) -> Frame:
        """Compress ``t`` (float32, float16 or bfloat16; any shape, device, strides). Deterministic:
        the same input and parameters give the same bytes."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t: expected a torch.Tensor, got {type(t).__name__}")
        header = self.header(t)
        if len(header.shape) > 8:
            raise ValueError(f"t: at most 8 dimensions are supported, got {t.dim()}")
        if header.geometry.groups > MAX_GROUPS:
            raise ValueError(f"t: shape {tuple(t.shape)} has {header.geometry.groups} scale "
                             f"groups; a frame carries at most {MAX_GROUPS}")
        if nonzero_numel(header.shape) > MAX_NUMEL:
            raise ValueError(f"t: shape {tuple(t.shape)} has more than {MAX_NUMEL} elements "
                             "(zero dims counted as 1), more than a frame carries")
        t = t.detach()
        if self.backend == "numpy":
            bits = t.contiguous().cpu().view(torchpath.TORCH_BITS[header.dtype]).numpy()
            data = reference.compress(bits.view(reference.NUMPY_BITS[header.dtype]), header)
        else:
            data = torchpath.compress(t.contiguous(), header)
        return Frame(data, device=t.device)

    def decompress(self, frame, *, device=None) -> torch.Tensor:
        """Decode a ``Frame`` or its bytes. The frame carries its own mode and parameters, so any
        Codec decodes any frame. The tensor goes to ``device``, else the frame's device (CPU for
        plain bytes). Raises ``FrameError`` for corrupted, truncated or foreign data."""
        return decompress(frame, device=device, backend=self.backend)


def _dtype_of(t: torch.Tensor) -> DType:
    try:
        return torchpath.TORCH_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(
            f"t: dtype {t.dtype} is not supported; actpack compresses float32, float16 and "
            "bfloat16 tensors"
        ) from None


def decompress(frame, *, device=None, backend: str = "torch") -> torch.Tensor:
    """Decode a ``Frame`` or its bytes to a tensor (see ``Codec.decompress``)."""
    if isinstance(frame, Frame):
        target = frame.device if device is None else torch.device(device)
        data = bytes(frame)
    elif isinstance(frame, (bytes, bytearray, memoryview)):
        target = torch.device("cpu") if device is None else torch.device(device)
        data = frame
    else:
        raise TypeError(f"frame: expected a Frame or bytes, got {type(frame).__name__}")
    if backend == "numpy":
        bits, header = reference.decompress(data)
        signed = bits.view(np.int32 if bits.itemsize == 4 else np.int16)
        t = torch.from_numpy(np.array(signed, copy=True))
        return t.view(torchpath.TORCH_OF[header.dtype]).to(target)
    if backend != "torch":
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return torchpath.decompress(data, device=target)
