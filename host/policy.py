"""Which codec setting each saved tensor gets: ``SavedInfo`` describes it, a ``Policy`` decides.

A setting is one of ``"keep"`` (store the tensor as it is), ``"mask"`` (one bit per value: only
where x > 0; exact for what ReLU's backward reads), or a codec setting: ``"sfpr8"``,
``"sfpr8:<range_max>"``, ``"dct"`` (table optH), ``"dct:<table>"``, ``"eb:<error_bound>"``,
``"eb2:<error_bound>"``, a dict of ``actpack.Codec`` keywords, or an ``actpack.Codec``. A
``Rule`` also takes a function from ``SavedInfo`` to a setting (a setting per tensor).

``policy="auto"`` (``Policy.auto()``) starts from JPEG-ACT (Evans et al., ISCA 2020) and keeps
what backward reads in full precise enough for the gradients (measured against plain autograd):

1. kept as they are: non-float tensors (pool indices, dropout masks), float64, parameters and
   tensors cast or viewed from parameters (autocast's bf16 weight copies), tensors under
   ``min_bytes`` (64 KiB), sparse/overlapping/odd tensors the codec does not take;
2. ``"mask"`` for a tensor whose only savers read nothing but its sign: ReLU's own output (its
   backward is ``grad * (result > 0)``), as long as no other op saves the same tensor;
   if another op saves the same tensor too, its values are stored as well (rules 3-7), and the mask
   keeps serving ReLU's backward, so ReLU's gradient stays exact;
3. ``"keep"`` for the inputs ``torch.utils.checkpoint`` saves to recompute its block from: a
   lossy seed makes every recomputed activation of the block lossy, ReLU masks included
   (measured: 6 % off on the first conv's weight gradient instead of under 1 %);
4. ``probability_setting`` for softmax outputs (attention probabilities, and the views of
   them the matmul with the values saves): ``"eb"`` with the bound ``PROBABILITY_BOUND / T``
   (T the row's length: a tenth of a percent or so of its mean probability 1/T, whatever T).
   Not a group code: its error is absolute, about 0.4 % of the largest probability of the
   group, while most probabilities of a T-token row are about 1/T, so at T = 64 they moved by
   a quarter. One step's gradients hid it (cosine 1.0000 on the attention model); training
   did not: the character transformer of ``bench train``, 400 steps, validation loss 2.47
   with them stored (sfpr8 and dct:optL) against 1.79 plain, and 1.785 with them kept (one
   seed; 26.6 -> 9.6 MiB saved-activation peak, 2.8x instead of 4.5x). With the bound
   (``eb:0.0001`` at T = 64; 6.6x on them): see ``PROBABILITY_BOUND``;
5. ``"sfpr8:3.96875"`` for conv outputs (op ``"conv"``: what BatchNorm's backward reads in
   full, its weight gradient is a sum over exactly those values) and normalization outputs (op
   ``"norm"``: what SiLU, GELU, Hardswish and the other value-reading activations read);
6. ``"dct:optL"`` for the other 4-D activations (ReLU outputs the next conv reads, pool outputs,
   sums, gated products; not the model's inputs) whose planes hold an 8 x 8 block; smaller
   planes are stored as (position, channel) rows (``offload``), which a 2-D DCT does not suit;
7. ``"sfpr8:3.96875"`` for everything else (linear layers' inputs and outputs, small planes).

Why not JPEG-ACT's optH everywhere (the assignment until 2026-12): gradients, not the loss, show
what lossy storage costs, and one step of small models with BatchNorm, depthwise convs,
squeeze-excitation and attention (``tests/host/test_offload_gradient_check.py``, against plain
autograd) gave a minimum per-parameter gradient cosine of 0.24 with optH on conv outputs and
4-D activations (a BatchNorm weight behind a depthwise conv: its gradient is a small sum that
optH's error swamps), 0.94 on a BatchNorm ResNet with optH only on ReLU outputs, and >= 0.98
with this assignment (relative L2 error of all gradients <= 0.02) at 4.2-5.3x instead of
4.4-8.8x. A model without BatchNorm trains on optH as well (the digits CNN: 96.94 % against
97.21 %), so ``Policy.auto(conv="dct:optH", spatial="dct:optH")`` is the memory-first
setting for such models, and JPEG-ACT's schedule is optsL for the first epochs and optsH after
(``Policy.auto(conv="dct:optsL", spatial="dct:optsL")`` first).

Why 3.96875 and not the codec's default 4.5: the codec maps a channel's max |x| to ``range_max``
and saturates at 127/32 = 3.96875, so 4.5 clips the top 12 % of every channel. On the digits
CNN's activations that clipping is most of the error (ReLU outputs: 4.2 % relative error at 4.5,
0.44 % at 3.96875, same size within 1 %), and one step's weight gradients move 2-9 % off
instead of 0.2-0.6 %.

Rules run in order and the first that matches decides; a ``"mask"`` rule only ever matches a
tensor proven to be read as a mask (``SavedInfo.mask_only``), whatever its other conditions say.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from actpack.codec import Codec
from actpack.codec.spec import MAX_GROUPS, geometry

from .lossless import LOSSLESS, Lossless, lossless_takes

__all__ = ["CODEC_DTYPES", "CONTEXTS", "OPS", "PROBABILITY_BOUND", "SFPR8_FULL_RANGE", "Policy",
           "Rule", "SavedInfo", "is_probabilities", "op_kind", "parse_setting",
           "probability_setting", "producer", "producer_kind", "register_policy"]

CODEC_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The largest range_max that never saturates: int8 with 5 fraction bits holds 127/32.
SFPR8_FULL_RANGE = 127 / 32

# Op kinds a saved tensor's producer is classified into (``op_kind``). "input": no autograd history
# (model inputs, tensors computed without grad, tensors saved inside a compiled region).
CONTEXTS = ("eager", "checkpoint", "compiled")
OPS = ("conv", "linear", "relu", "activation", "pool", "norm", "sum", "dropout", "input",
       "parameter", "other")

_KIND_PREFIXES = (
    ("conv", ("Convolution", "CudnnConvolution", "MkldnnConvolution", "SlowConv",
              "ConvDepthwise", "MiopenConvolution", "ThnnConv")),
    ("linear", ("Addmm", "Mm", "Bmm", "Baddbmm", "Linear", "MkldnnLinear")),
    ("relu", ("Relu",)),
    ("activation", ("Gelu", "Silu", "Sigmoid", "Tanh", "Hardtanh", "LeakyRelu", "Elu", "Softplus",
                    "Hardswish", "Hardsigmoid", "Mish", "Softmax", "LogSoftmax", "Threshold",
                    "Prelu", "Rrelu", "Celu", "Selu")),
    ("pool", ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "FractionalMaxPool",
              "MaxUnpool")),
    ("norm", ("NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm", "BatchNorm",
              "NativeLayerNorm", "NativeGroupNorm", "LayerNorm", "GroupNorm", "RmsNorm")),
    ("sum", ("Add", "Sub")),
    ("dropout", ("NativeDropout", "Dropout", "FusedDropout")),
)
# Nodes that only view, cast or copy: a tensor behind them is classified by what is behind.
_PASS_THROUGH = ("View", "Reshape", "UnsafeView", "TBackward", "Transpose", "Permute", "Squeeze",
                 "Unsqueeze", "ToCopy", "Clone", "Alias", "Expand", "Contiguous", "Flatten",
                 "Unflatten", "Slice", "Select", "Narrow", "AsStrided", "Split", "Chunk",
                 "Unbind")


def _name(node) -> str:
    return type(node).__name__


def producer(grad_fn) -> str:
    """The class name of the node that made a tensor with this ``grad_fn``, views and casts
    looked through: "AccumulateGrad" for a parameter (or a view of one), "" for no history."""
    node, hops = grad_fn, 0
    while node is not None and hops < 64:
        name = _name(node)
        if name == "AccumulateGrad" or not name.startswith(_PASS_THROUGH):
            return name
        nexts = [n for n, _ in node.next_functions if n is not None]
        node, hops = (nexts[0] if nexts else None), hops + 1
    return "" if node is None else _name(node)


def op_kind(grad_fn) -> str:
    """The kind (one of ``OPS``) of the op that produced a tensor with this ``grad_fn``.

    Views and casts are looked through (``producer``); a chain that ends at a leaf that
    requires grad (an ``AccumulateGrad`` node) is a ``"parameter"``.
    """
    return producer_kind(producer(grad_fn))


def producer_kind(name: str) -> str:
    """The kind (one of ``OPS``) of a producer named as ``producer`` names it."""
    if name == "AccumulateGrad":
        return "parameter"
    if not name:
        return "input"
    for kind, prefixes in _KIND_PREFIXES:
        if name.startswith(prefixes):
            return kind
    return "other"


@dataclass(frozen=True)
class SavedInfo:
    """What a policy knows about a saved tensor.

    ``layer`` is the dotted module path of the module whose forward was running when the tensor
    was first saved ("" outside any submodule; ``module_type`` then names the root's class);
    ``op`` the kind of its producer (see ``OPS``), ``grad_fn`` the tensor's own node's class name
    ("" without history) and ``producer`` the producer's, views and casts looked through
    (``producer``); ``mask_only`` is True while every op that saved it reads nothing but
    its sign (ReLU saving its own output) or nothing but its shape (max pooling saving its
    input). ``context`` says who saved it: "eager" (an op),
    "checkpoint" (``torch.utils.checkpoint`` keeping the input it recomputes from) or "compiled"
    (a ``torch.compile`` region, which hides the op: ``op`` is then "input").
    """

    layer: str
    module_type: str
    op: str
    grad_fn: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    mask_only: bool = False
    context: str = "eager"
    producer: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def parse_setting(value) -> Codec | None:
    """A setting (see the module docstring) as the ``Codec`` that stores it; None for "keep"."""
    if isinstance(value, Codec):
        return value
    if isinstance(value, Mapping):
        return Codec(**value)
    if not isinstance(value, str):
        raise TypeError(f"setting: expected 'keep', a mode string, a dict of Codec keywords or a "
                        f"Codec, got {type(value).__name__}")
    name, _, arg = value.partition(":")
    if name == "keep" and not arg:
        return None
    if name == "mask" and not arg:
        return Codec(mode="mask")
    try:
        if name == "sfpr8":
            return Codec(mode="sfpr8", range_max=float(arg)) if arg else Codec(mode="sfpr8")
        if name == "dct":
            return Codec(mode="dct", table=arg or "optH")
        if name in ("eb", "eb2") and arg:
            return Codec(mode=name, error_bound=float(arg))
    except ValueError as exc:
        raise ValueError(f"setting {value!r}: {exc}") from None
    raise ValueError(f"setting {value!r}: expected 'keep', 'mask', 'sfpr8[:<range_max>]', "
                     "'dct[:<table>]', 'eb:<error_bound>' or 'eb2:<error_bound>'")


def _as_set(value) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


@dataclass(frozen=True, init=False)
class Rule:
    """``setting`` for the saved tensors that match every condition given.

    - ``op``: an op kind or several (see ``OPS``);
    - ``module``: a glob on the layer's dotted path (``"features.*"``), or several;
    - ``module_type``: a module class name (``"Conv2d"``) or several;
    - ``grad_fn``: a glob on the producer's node name (``"Convolution*"``);
    - ``context``: who saves it, "eager", "checkpoint" or "compiled" (see ``SavedInfo``);
    - ``min_bytes`` / ``max_bytes``: size bounds (inclusive);
    - ``where``: any predicate on ``SavedInfo``.

    ``setting``: a setting (module docstring), or a function from ``SavedInfo`` to one.
    """

    codec: Codec | None
    setting: object
    op: frozenset[str] | None
    module: tuple[str, ...] | None
    module_type: frozenset[str] | None
    grad_fn: str | None
    context: frozenset[str] | None
    min_bytes: int | None
    max_bytes: int | None
    where: Callable[[SavedInfo], bool] | None

    def __init__(self, setting, *, op=None, module=None, module_type=None, grad_fn=None,
                 context=None, min_bytes=None, max_bytes=None, where=None):
        ops = _as_set(op)
        if ops is not None and not ops <= set(OPS):
            raise ValueError(f"op: unknown op kind(s) {sorted(ops - set(OPS))}; expected "
                             f"some of {OPS}")
        contexts = _as_set(context)
        if contexts is not None and not contexts <= set(CONTEXTS):
            raise ValueError(f"context: unknown context(s) {sorted(contexts - set(CONTEXTS))}; "
                             f"expected some of {CONTEXTS}")
        if where is not None and not callable(where):
            raise TypeError(f"where: expected a callable, got {type(where).__name__}")
        set_ = object.__setattr__
        set_(self, "codec", None if _per_tensor(setting) else parse_setting(setting))
        set_(self, "setting", setting)
        set_(self, "op", ops)
        set_(self, "module", None if module is None else tuple(_as_set(module)))
        set_(self, "module_type", _as_set(module_type))
        set_(self, "grad_fn", grad_fn)
        set_(self, "context", contexts)
        set_(self, "min_bytes", min_bytes)
        set_(self, "max_bytes", max_bytes)
        set_(self, "where", where)

    @property
    def is_mask(self) -> bool:
        return self.codec is not None and self.codec.mode == "mask"

    def codec_for(self, info: SavedInfo) -> Codec | None:
        """The codec this rule gives ``info`` (a matching tensor)."""
        return parse_setting(self.setting(info)) if _per_tensor(self.setting) else self.codec

    def matches(self, info: SavedInfo) -> bool:
        if self.is_mask and not info.mask_only:
            return False
        return ((self.op is None or info.op in self.op)
                and (self.module is None
                     or any(fnmatch.fnmatchcase(info.layer, p) for p in self.module))
                and (self.module_type is None or info.module_type in self.module_type)
                and (self.grad_fn is None or fnmatch.fnmatchcase(info.grad_fn, self.grad_fn))
                and (self.context is None or info.context in self.context)
                and (self.min_bytes is None or info.nbytes >= self.min_bytes)
                and (self.max_bytes is None or info.nbytes <= self.max_bytes)
                and (self.where is None or bool(self.where(info))))


def _has_blocks(info: SavedInfo) -> bool:
    """Whether the tensor's planes hold at least one whole 8 x 8 block (not 4-D: always)."""
    return len(info.shape) != 4 or info.shape[2] * info.shape[3] >= 64


def _per_tensor(setting) -> bool:
    """Whether ``setting`` is a function of the tensor (``Rule``'s per-tensor settings)."""
    return callable(setting) and not isinstance(setting, Codec)


def is_probabilities(info: SavedInfo) -> bool:
    """A softmax output (attention probabilities), or a view of one (the batched matmul that
    applies them to the values saves them reshaped)."""
    return info.producer.startswith("Softmax")


# The error bound of softmax outputs times their row length T: each probability comes back
# within PROBABILITY_BOUND / T, a fixed share of the row's mean probability 1/T whatever T is.
# Measured (bench train's character transformer, T = 64, 400 steps, 3 seeds): eb:0.0001 here,
# validation loss +0.45 % (median) against plain, 6.6x on the probabilities.
PROBABILITY_BOUND = 0.0064


def probability_setting(info: SavedInfo) -> str:
    """"auto"'s setting for softmax outputs (rule 4): ``eb`` within ``PROBABILITY_BOUND / T``."""
    return f"eb:{PROBABILITY_BOUND / max(1, info.shape[-1]):.6g}"


def _spatial(info: SavedInfo) -> bool:
    """4-D with planes that hold an 8 x 8 block: an image-like activation for the DCT. Not the
    model's inputs (op "input"): the first conv's weight gradient reads them directly, and
    they are whatever the user feeds (noise compresses badly under optH: 10 % off). Not
    normalization outputs: the activations after them read their values (see rule 4)."""
    return (len(info.shape) == 4 and _has_blocks(info) and info.op != "input"
            and info.op != "norm")


def codec_takes(info: SavedInfo) -> bool:
    """Whether the codec can store a tensor like this at all (dtype, rank, scale groups)."""
    if info.dtype not in CODEC_DTYPES or len(info.shape) > 8 or info.numel == 0:
        return False
    return geometry(info.shape).groups <= MAX_GROUPS


class Policy:
    """Chooses a codec setting per saved tensor: ``rules`` in order, else ``default``.

    Before any rule, parameters (and their casts and views) and tensors under ``min_bytes`` are
    kept as they are; integer and bool tensors get ``integers`` ("lossless": ``host.lossless``,
    exact; or "keep"), other tensors the codec cannot take are kept. A ``Policy`` is also a
    plain function of ``SavedInfo``: ``policy(info)`` returns the ``Codec`` (or ``Lossless``)
    to use, or None to keep.
    """

    def __init__(self, rules: Iterable[Rule] = (), *, default="sfpr8", min_bytes: int = 65536,
                 integers: str = "lossless"):
        self.rules = tuple(rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise TypeError(f"rules: expected Rule objects, got {type(r).__name__}")
        self.default = parse_setting(default)
        if self.default is not None and self.default.mode == "mask":
            raise ValueError("default: 'mask' is only exact for ReLU outputs; use a Rule('mask')")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise ValueError(f"min_bytes: expected an integer >= 0, got {min_bytes!r}")
        self.min_bytes = min_bytes
        if integers not in ("lossless", "keep"):
            raise ValueError(f"integers: expected 'lossless' or 'keep', got {integers!r}")
        self.integers: Lossless | None = LOSSLESS if integers == "lossless" else None

    @classmethod
    def auto(cls, *, conv=f"sfpr8:{SFPR8_FULL_RANGE}", spatial="dct:optL",
             values=f"sfpr8:{SFPR8_FULL_RANGE}", mask: bool = True, checkpoint_inputs="keep",
             probabilities=probability_setting,
             min_bytes: int = 65536, integers: str = "lossless",
             rules: Iterable[Rule] = ()) -> Policy:
        """The default assignment (see the module docstring). ``rules`` go first, so they
        override it; ``conv`` is the conv-output setting (JPEG-ACT trains with "dct:optsL" for
        the first epochs, then "dct:optsH"); ``spatial`` the setting of the other 4-D
        activations with 8 x 8 planes; ``values`` the setting for the rest;
        ``checkpoint_inputs`` the setting for the inputs ``torch.utils.checkpoint`` recomputes
        from; ``probabilities`` the setting for softmax outputs (attention maps, rule 4);
        ``integers`` what integer and bool tensors get ("lossless" or "keep")."""
        auto_rules = [Rule(checkpoint_inputs, context="checkpoint"),
                      Rule(probabilities, where=is_probabilities)]
        if mask:
            auto_rules.append(Rule("mask"))
        # planes under 8 x 8 are stored as (position, channel) rows (offload._channel_rows),
        # where a 2-D DCT has no image to work on
        auto_rules.append(Rule(conv, op="conv", where=_has_blocks))
        auto_rules.append(Rule(spatial, where=_spatial))
        return cls([*rules, *auto_rules], default=values, min_bytes=min_bytes,
                   integers=integers)

    @classmethod
    def keep(cls) -> Policy:
        """Store every tensor as it is (stats and dedup without compression)."""
        return cls(default="keep", integers="keep")

    def __call__(self, info: SavedInfo) -> Codec | Lossless | None:
        if info.op == "parameter" or info.nbytes < self.min_bytes:
            return None
        if lossless_takes(info.dtype):
            return self.integers
        if not codec_takes(info):
            return None
        for rule in self.rules:
            if rule.matches(info):
                return rule.codec_for(info)
        return self.default

    def __repr__(self) -> str:
        integers = "keep" if self.integers is None else "lossless"
        return (f"Policy(rules={list(self.rules)!r}, default={self.default!r}, "
                f"min_bytes={self.min_bytes}, integers={integers!r})")


_NAMED: dict[str, Callable[[], Policy]] = {}


def register_policy(name: str, factory: Callable[[], Policy]) -> None:
    """Make ``policy=name`` build ``factory()`` (how "adaptive", defined in ``host.adaptive``
    on top of the session, is named without this module importing it)."""
    _NAMED[name] = factory


def resolve_policy(policy) -> Callable[[SavedInfo], Codec | None]:
    """``policy=`` of ``offload``: "auto", "adaptive" (``AdaptivePolicy()``), "keep", a setting
    applied to every large float tensor
    (e.g. "sfpr8"), a ``Policy``, or a function of ``SavedInfo`` returning a setting."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        if policy == "auto":
            return Policy.auto()
        if policy in _NAMED:
            return _NAMED[policy]()
        if policy == "keep":
            return Policy.keep()
        if policy == "mask":
            return Policy([Rule("mask")], default="keep")
        return Policy(default=policy)
    if callable(policy):
        def call(info: SavedInfo) -> Codec | None:
            if not codec_takes(info):
                return None
            codec = parse_setting(policy(info))
            if codec is not None and codec.mode == "mask" and not info.mask_only:
                raise ValueError(
                    f"policy: returned 'mask' for layer {info.layer!r} ({info.op}), which is "
                    "not read as a ReLU mask only; 'mask' would make its gradient wrong")
            return codec
        return call
    raise TypeError(f"policy: expected 'auto', 'keep', a setting string, a Policy or a function, "
                    f"got {type(policy).__name__}")
