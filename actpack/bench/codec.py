"""``actpack bench codec``: compression ratio, error and throughput of every codec mode on real
activations, next to zstd, SZ3 and ZFP run on the same data in the same process.

Data: the outputs of the conv, ReLU and linear layers of ``actpack.data.digits_cnn`` after a short
training run, captured on a batch of test digits (12.6 MB of float32 at batch 64). A second
model, the BatchNorm residual CNN ``actpack.models.digits_resnet`` (trained and captured the
same way, its conv and ReLU outputs), gets the error-bounded rows only (eb, eb2, SZ3, ZFP) at its
own bounds: the eb2 targets (ratio >= 1.2x SZ3's on conv and on ReLU outputs at every bound,
throughput >= SZ3's) are checked on both. Every actpack
row runs the torch path over all of it (the mask row over the ReLU outputs only, the only layers
whose consumer needs nothing but x > 0); the numpy reference model, a pure-Python entropy coder,
is timed on a subset (the first images of the batch, about 1 MB) and its bytes are compared with
the torch path's on that subset.

Figures: ratio = input bytes / frame bytes; rel. RMSE = RMSE / standard deviation of the input
(pooled over the row's layers); max abs = largest |x - x_hat|; MB/s = 10**6 bytes of float32 input
per second (each layer's best of ``--repeats`` rounds, summed; the rows take turns within a
round), with ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from actpack import Codec, decompress
from actpack.bench import (
    _version,
    add_output_arguments,
    best_of,
    machine_info,
    publish,
    source_info,
)
from actpack.codec.tables import NAMED_TABLES
from actpack.data import (
    KINDS,
    capture_activations,
    digits_batch,
    digits_cnn,
    layer_kinds,
    train_digits,
)
from actpack.models import digits_resnet

__all__ = ["add_arguments", "collect", "render_markdown", "run"]

DCT_TABLES = (*NAMED_TABLES, "jpeg50")  # every named table, and one jpeg quality
EB_FACTORS = (0.01, 0.02, 0.05)  # error bounds as fractions of the pooled std of the data
TARGET_DCT_MBPS = 200.0
TARGET_DCT_OPTH_RELU_RATIO = 8.0
TARGET_EB2_VS_SZ3 = 1.2  # eb2's ratio over SZ3's at the same bound, per kind (issue 10)
EB2_KINDS = ("conv", "relu_conv")
_MB = 1e6


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, "codec")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: batch 8, 5 training steps, 1 repeat")
    p.add_argument("--batch", type=int, default=None, help="images per capture (default 64)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="training steps before capture (default 100)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timing repeats, best kept (default 5)")
    p.add_argument("--numpy-mb", type=float, default=None,
                   help="size of the subset the numpy model is timed on (default 1 MB)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a performance target is missed")


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Layer:
    name: str
    kind: str
    x: torch.Tensor  # the whole captured activation
    sub: torch.Tensor  # the subset the numpy model runs on

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size()


def load_layers(*, batch: int, train_steps: int, numpy_bytes: float, seed: int = 0):
    """Train the digits CNN briefly, capture its activations on ``batch`` test images and pick the
    numpy subset (the first k images of every layer, k chosen so the subset is ~numpy_bytes)."""
    return model_layers(digits_cnn(seed=seed), batch=batch, train_steps=train_steps,
                        numpy_bytes=numpy_bytes, seed=seed)


def model_layers(model, *, batch: int, train_steps: int, numpy_bytes: float, seed: int = 0,
                 kinds_kept=KINDS):
    """``load_layers`` for any digits model: the layers of ``kinds_kept`` only."""
    trained = train_digits(model, train_steps, seed)
    acts = capture_activations(model, digits_batch(batch).x)
    kinds = layer_kinds(model)
    acts = {name: t for name, t in acts.items() if kinds[name] in kinds_kept}
    per_image = sum(t[0].numel() * t.element_size() for t in acts.values())
    k = max(1, min(batch, round(numpy_bytes / per_image)))
    layers = [Layer(name, kinds[name], t.contiguous(), t[:k].contiguous())
              for name, t in acts.items()]
    return layers, k, trained


def pooled_std(tensors) -> float:
    n = sum(t.numel() for t in tensors)
    s = sum(float(t.double().sum()) for t in tensors)
    s2 = sum(float(t.double().square().sum()) for t in tensors)
    mean = s / n
    return math.sqrt(max(s2 / n - mean * mean, 0.0))


def _round_sig(v: float, digits: int = 3) -> float:
    return float(f"{v:.{digits}g}")


# ----------------------------------------------------------------------------------------------
# error and size accounting


@dataclass
class Tally:
    """Sizes and errors of a set of tensors, mergeable (per layer -> per kind -> per row)."""

    input_bytes: int = 0
    frame_bytes: int = 0
    n: int = 0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_err2: float = 0.0
    max_abs: float = 0.0

    @classmethod
    def of(cls, x: torch.Tensor, target: torch.Tensor, y: torch.Tensor, frame_bytes: int) -> Tally:
        t = target.double()
        diff = y.double() - t
        return cls(x.numel() * x.element_size(), frame_bytes, t.numel(), float(t.sum()),
                   float(t.square().sum()), float(diff.square().sum()),
                   float(diff.abs().max()) if diff.numel() else 0.0)

    def __add__(self, o: Tally) -> Tally:
        return Tally(self.input_bytes + o.input_bytes, self.frame_bytes + o.frame_bytes,
                     self.n + o.n, self.sum_x + o.sum_x, self.sum_x2 + o.sum_x2,
                     self.sum_err2 + o.sum_err2, max(self.max_abs, o.max_abs))

    def summary(self) -> dict:
        std = math.sqrt(max(self.sum_x2 / self.n - (self.sum_x / self.n) ** 2, 0.0))
        rmse = math.sqrt(self.sum_err2 / self.n)
        return {
            "input_bytes": self.input_bytes,
            "frame_bytes": self.frame_bytes,
            "ratio": self.input_bytes / self.frame_bytes,
            "rel_rmse": rmse / std if std > 0 else (0.0 if rmse == 0 else math.inf),
            "max_abs_err": self.max_abs,
        }


@dataclass
class Row:
    name: str
    family: str  # "actpack" or "reference"
    mode: str
    param: object
    layers: list[str]
    tallies: dict[str, Tally]  # by layer
    kinds: dict[str, str]
    compress_s: float
    decompress_s: float
    numpy_compress_s: float | None = None
    numpy_decompress_s: float | None = None
    numpy_bytes: int = 0
    numpy_identical: bool | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        total = sum(self.tallies.values(), Tally())
        by_kind = {}
        for kind in KINDS:
            ts = [t for name, t in self.tallies.items() if self.kinds[name] == kind]
            if ts:
                by_kind[kind] = sum(ts, Tally()).summary()
        mbps = total.input_bytes / _MB
        out = {
            "name": self.name,
            "family": self.family,
            "mode": self.mode,
            "param": self.param,
            "layers": self.layers,
            **total.summary(),
            "compress_mbps": mbps / self.compress_s,
            "decompress_mbps": mbps / self.decompress_s,
            "numpy_compress_mbps": None,
            "numpy_decompress_mbps": None,
            "numpy_subset_bytes": self.numpy_bytes or None,
            "numpy_identical": self.numpy_identical,
            "by_kind": by_kind,
            "by_layer": {name: t.summary() for name, t in self.tallies.items()},
            "note": self.note,
        }
        if self.numpy_compress_s is not None:
            out["numpy_compress_mbps"] = self.numpy_bytes / _MB / self.numpy_compress_s
            out["numpy_decompress_mbps"] = self.numpy_bytes / _MB / self.numpy_decompress_s
        return out


# ----------------------------------------------------------------------------------------------
# rows


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


@dataclass
class Job:
    """One row's compressor over its layers, timed in rounds interleaved with every other row's
    (so that other work on the machine hits all rows alike); the best time per layer is kept."""

    name: str
    family: str
    mode: str
    param: object
    layers: list[Layer]
    compress: object  # (layer) -> blob
    nbytes: object  # (blob) -> int
    decompress: object  # (blob, layer) -> tensor or array
    target: object = None  # (x) -> what the decoder should give back; x itself when None
    note: str = ""
    codec_kwargs: dict | None = None  # actpack rows: the Codec arguments
    best_c: list[float] = field(default_factory=list)
    best_d: list[float] = field(default_factory=list)
    blobs: list = field(default_factory=list)
    outs: list = field(default_factory=list)

    def round(self, *, timed: bool = True) -> None:
        if not self.best_c:
            n = len(self.layers)
            self.best_c, self.best_d = [math.inf] * n, [math.inf] * n
            self.blobs, self.outs = [None] * n, [None] * n
        for i, layer in enumerate(self.layers):
            t0 = time.perf_counter()
            blob = self.compress(layer)
            t1 = time.perf_counter()
            out = self.decompress(blob, layer)
            t2 = time.perf_counter()
            if timed:
                self.best_c[i] = min(self.best_c[i], t1 - t0)
                self.best_d[i] = min(self.best_d[i], t2 - t1)
            self.blobs[i], self.outs[i] = blob, out

    def row(self, *, numpy_repeats: int) -> Row:
        tallies = {}
        for layer, blob, out in zip(self.layers, self.blobs, self.outs, strict=True):
            y = out if isinstance(out, torch.Tensor) else torch.from_numpy(
                np.array(out, dtype=np.float32)).reshape(layer.x.shape)  # np.array: a copy
            target = self.target(layer.x) if self.target else layer.x
            tallies[layer.name] = Tally.of(layer.x, target, y, self.nbytes(blob))
        row = Row(self.name, self.family, self.mode, self.param,
                  [la.name for la in self.layers], tallies,
                  {la.name: la.kind for la in self.layers}, sum(self.best_c), sum(self.best_d),
                  note=self.note)
        if self.codec_kwargs is not None:
            _numpy_model(row, self.codec_kwargs, self.layers, numpy_repeats)
        return row


def _numpy_model(row: Row, kwargs: dict, layers: list[Layer], repeats: int) -> None:
    """Time the numpy model on the layers' subsets and compare its bytes and decoded values with
    the torch path's."""
    fast, ref = Codec(backend="torch", **kwargs), Codec(backend="numpy", **kwargs)
    subs = [layer.sub for layer in layers]
    t_c = t_d = 0.0
    identical = True
    for s in subs:
        tc, nf = best_of(lambda s=s: ref.compress(s), repeats)
        td, ny = best_of(lambda nf=nf: decompress(nf, backend="numpy"), repeats)
        t_c, t_d = t_c + tc, t_d + td
        tf = fast.compress(s)
        identical &= bytes(tf) == bytes(nf)
        identical &= torch.equal(_bits(fast.decompress(tf)), _bits(ny))
    row.numpy_compress_s, row.numpy_decompress_s = t_c, t_d
    row.numpy_bytes = sum(s.numel() * s.element_size() for s in subs)
    row.numpy_identical = bool(identical)


def actpack_job(name: str, kwargs: dict, layers: list[Layer], *, target=None,
                note: str = "") -> Job:
    fast = Codec(backend="torch", **kwargs)
    return Job(name, "actpack", kwargs["mode"], kwargs.get("table", kwargs.get("error_bound")),
               layers, lambda la: fast.compress(la.x), lambda f: f.nbytes,
               lambda f, la: fast.decompress(f), target, note, dict(kwargs))


def reference_jobs(bounds: list[float], layers: list[Layer]) -> tuple[list[Job], list[str]]:
    """Jobs of every reference compressor that is installed, and the names of those that are
    not. Each works on the float32 numpy view of the activations."""
    jobs, missing = [], []
    try:
        zstd = importlib.import_module("zstandard")
    except ImportError:
        missing.append("zstandard")
    else:
        cctx, dctx = zstd.ZstdCompressor(level=3), zstd.ZstdDecompressor()
        jobs.append(Job("zstd-3", "reference", "zstd", 3, layers,
                        lambda la: cctx.compress(la.x.numpy().tobytes()), len,
                        lambda c, la: np.frombuffer(dctx.decompress(c), dtype=np.float32)))
    try:
        pysz = importlib.import_module("pysz")
    except ImportError:
        missing.append("pysz")
    else:
        sz = pysz.sz()

        def sz_compress(eb):
            def go(la):
                a = la.x.numpy()
                cfg = pysz.szConfig()
                cfg.setDims(list(a.shape))
                cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
                cfg.absErrorBound = eb
                return sz.compress(a, cfg)[0]
            return go

        for eb in bounds:
            jobs.append(Job(f"SZ3/{eb:g}", "reference", "sz3", eb, layers, sz_compress(eb),
                            lambda c: c.nbytes,
                            lambda c, la: sz.decompress(c, np.float32, tuple(la.x.shape))[0]))
    try:
        zfpy = importlib.import_module("zfpy")
    except ImportError:
        missing.append("zfpy")
    else:
        for eb in bounds:
            jobs.append(Job(f"ZFP/{eb:g}", "reference", "zfp", eb, layers,
                            lambda la, eb=eb: zfpy.compress_numpy(la.x.numpy(), tolerance=eb),
                            len, lambda c, la: zfpy.decompress_numpy(c)))
    return jobs, missing


# ----------------------------------------------------------------------------------------------
# the benchmark


def collect(*, batch: int = 64, train_steps: int = 100, repeats: int = 5,
            numpy_mb: float = 1.0, threads: int = 2, quick: bool = False) -> dict:
    """Run the whole benchmark and return every figure as a JSON-ready dict."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _collect(batch, train_steps, repeats, numpy_mb, threads, quick)
    finally:
        torch.set_num_threads(old_threads)


def _collect(batch, train_steps, repeats, numpy_mb, threads, quick) -> dict:
    meta = machine_info(threads=threads)
    meta["source"] = source_info()
    layers, k, trained = load_layers(batch=batch, train_steps=train_steps,
                                     numpy_bytes=numpy_mb * _MB)
    sigma = pooled_std([la.x for la in layers])
    bounds = [_round_sig(f * sigma) for f in EB_FACTORS]
    relu = [la for la in layers if la.kind.startswith("relu")]
    numpy_repeats = min(repeats, 2)

    jobs = [actpack_job(f"dct/{t}", {"mode": "dct", "table": t}, layers) for t in DCT_TABLES]
    jobs += eb_jobs(bounds, layers)
    jobs += [actpack_job("sfpr8", {"mode": "sfpr8"}, layers)]
    jobs += [actpack_job("mask", {"mode": "mask"}, relu, target=lambda x: (x > 0).to(x.dtype),
                         note="ReLU outputs only; error against 1[x > 0]")]
    refs, missing = reference_jobs(bounds, layers)
    jobs += refs
    # the second model: error-bounded rows only, at its own bounds
    layers2, _, trained2 = model_layers(digits_resnet(seed=0), batch=batch,
                                        train_steps=train_steps, numpy_bytes=numpy_mb * _MB,
                                        kinds_kept=EB2_KINDS)
    sigma2 = pooled_std([la.x for la in layers2])
    bounds2 = [_round_sig(f * sigma2) for f in EB_FACTORS]
    jobs2 = eb_jobs(bounds2, layers2) + [j for j in reference_jobs(bounds2, layers2)[0]
                                         if j.mode in ("sz3", "zfp")]
    jobs += jobs2

    # one untimed warm-up round (per-shape tables and caches are built on first use), then
    # `repeats` timed rounds over all rows
    rounds = [False] + [True] * repeats
    bar = tqdm(total=len(rounds) * len(jobs) + len(jobs), desc="bench codec", unit="run",
               leave=False, disable=None)
    for timed in rounds:
        for job in jobs:
            bar.set_postfix_str(job.name, refresh=False)
            job.round(timed=timed)
            bar.update()
    rows = []
    for job in jobs:
        bar.set_postfix_str(f"{job.name} (numpy model)", refresh=False)
        rows.append(job.row(numpy_repeats=numpy_repeats))
        bar.update()
    bar.close()

    second = {id(j) for j in jobs2}
    out_rows = [r.to_json() for j, r in zip(jobs, rows, strict=True) if id(j) not in second]
    rows2 = [r.to_json() for j, r in zip(jobs, rows, strict=True) if id(j) in second]
    meta["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta["libraries"] = {d: _version(d) for d in ("zstandard", "pysz", "zfpy")}
    result = {
        "meta": meta,
        "config": {
            "quick": quick,
            "batch": batch,
            "train_steps": train_steps,
            "test_accuracy": trained.test_accuracy,
            "repeats": repeats,
            "numpy_repeats": numpy_repeats,
            "threads": threads,
            "numpy_subset_images": k,
            "numpy_subset_bytes": sum(la.sub.numel() * 4 for la in layers),
            "mb": "10**6 bytes of float32 input",
        },
        "data": {
            "model": "actpack.data.digits_cnn (digits upsampled to 32x32)",
            "layers": describe_layers(layers),
            "total_bytes": sum(la.nbytes for la in layers),
            "sigma": sigma,
            "eb_factors": list(EB_FACTORS),
            "error_bounds": bounds,
        },
        "rows": out_rows,
        "second_model": {
            "model": "actpack.models.digits_resnet (BatchNorm residual CNN, digits upsampled "
                     "to 32x32)",
            "test_accuracy": trained2.test_accuracy,
            "layers": describe_layers(layers2),
            "total_bytes": sum(la.nbytes for la in layers2),
            "sigma": sigma2,
            "error_bounds": bounds2,
            "rows": rows2,
        },
        "missing_references": missing,
    }
    result["targets"], result["checks"] = evaluate_targets(out_rows, bounds)
    t2, c2 = evaluate_targets(rows2, bounds2, model="digits_resnet", eb2_only=True)
    result["targets"] += t2
    result["checks"] += c2
    return result


def describe_layers(layers: list[Layer]) -> list[dict]:
    """Name, kind, shape, bytes, std and zero fraction of each layer (the JSON's data)."""
    return [{"name": la.name, "kind": la.kind, "shape": list(la.x.shape), "bytes": la.nbytes,
             "std": float(la.x.double().std()),
             "zero_fraction": float((la.x == 0).double().mean())} for la in layers]


def eb_jobs(bounds: list[float], layers: list[Layer]) -> list[Job]:
    """The eb and eb2 rows at ``bounds``."""
    return [actpack_job(f"{mode}/{eb:g}", {"mode": mode, "error_bound": eb}, layers)
            for mode in ("eb", "eb2") for eb in bounds]


def evaluate_targets(rows: list[dict], bounds: list[float], *, model: str = "digits_cnn",
                     eb2_only: bool = False):
    """The issue's targets (performance) and the codec's invariants (correctness), each with its
    measured value and verdict; ``eb2_only``: the eb2 targets and the checks only (the second
    model's rows)."""
    by = {r["name"]: r for r in rows}
    targets = _eb2_targets(by, bounds, model)
    checks = _checks(rows, model if eb2_only else "")
    if eb2_only:
        return targets, checks
    dct = [r for r in rows if r["mode"] == "dct"]
    for way in ("compress", "decompress"):
        worst = min(dct, key=lambda r, w=way: r[f"{w}_mbps"])
        v = worst[f"{way}_mbps"]
        targets.append({"name": f"dct torch {way} >= {TARGET_DCT_MBPS:g} MB/s (slowest table: "
                                f"{worst['name']})",
                        "value": v, "threshold": TARGET_DCT_MBPS, "pass": v >= TARGET_DCT_MBPS})
    v = by["dct/optH"]["by_kind"]["relu_conv"]["ratio"]
    targets.append({"name": f"dct/optH ratio on ReLU'd conv activations >= "
                            f"{TARGET_DCT_OPTH_RELU_RATIO:g}x",
                    "value": v, "threshold": TARGET_DCT_OPTH_RELU_RATIO,
                    "pass": v >= TARGET_DCT_OPTH_RELU_RATIO})
    for eb in bounds:
        ours, sz = by[f"eb/{eb:g}"], by.get(f"SZ3/{eb:g}")
        for key, what in (("ratio", "ratio"), ("compress_mbps", "compress MB/s")):
            targets.append({
                "name": f"eb/{eb:g} beats SZ3/{eb:g} on {what}",
                "value": ours[key], "threshold": None if sz is None else sz[key],
                "pass": None if sz is None else ours[key] > sz[key],
            })
    return targets, checks


def _eb2_targets(by: dict, bounds: list[float], model: str) -> list[dict]:
    """eb2 against SZ3 at each bound: ratio >= TARGET_EB2_VS_SZ3 x SZ3's per kind, and the torch
    path's compress and decompress throughput >= SZ3's."""
    targets = []
    for eb in bounds:
        ours, sz = by[f"eb2/{eb:g}"], by.get(f"SZ3/{eb:g}")
        for kind in EB2_KINDS:
            v = ours["by_kind"][kind]["ratio"]
            ref = None if sz is None else sz["by_kind"][kind]["ratio"]
            targets.append({
                "name": f"{model} eb2/{eb:g} ratio on {kind} >= {TARGET_EB2_VS_SZ3:g}x SZ3's",
                "value": v, "threshold": None if ref is None else TARGET_EB2_VS_SZ3 * ref,
                "pass": None if ref is None else v >= TARGET_EB2_VS_SZ3 * ref})
        for key in ("compress_mbps", "decompress_mbps"):
            targets.append({
                "name": f"{model} eb2/{eb:g} {key.split('_')[0]} MB/s >= SZ3's",
                "value": ours[key], "threshold": None if sz is None else sz[key],
                "pass": None if sz is None else ours[key] >= sz[key]})
    return targets


def _checks(rows: list[dict], model: str) -> list[dict]:
    prefix = f"{model} " if model else ""
    checks = []
    for r in rows:
        if r["family"] == "actpack":
            checks.append({"name": f"{prefix}{r['name']}: numpy model bytes == torch path bytes",
                           "pass": bool(r["numpy_identical"])})
        if r["mode"] in ("eb", "eb2", "sz3"):
            checks.append({"name": f"{prefix}{r['name']}: max abs error <= bound",
                           "value": r["max_abs_err"], "threshold": r["param"],
                           "pass": r["max_abs_err"] <= r["param"]})
    return checks


# ----------------------------------------------------------------------------------------------
# output


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _verdict(p) -> str:
    return "n/a" if p is None else ("PASS" if p else "FAIL")


def render_table(result: dict, rows: list[dict] | None = None) -> str:
    head = ("| row | layers | ratio | ratio relu_conv | ratio conv | rel. RMSE | max abs err "
            "| C MB/s | D MB/s | numpy C MB/s | numpy D MB/s | numpy = torch |")
    lines = [head, "|" + "---|" * 12]
    for r in result["rows"] if rows is None else rows:
        bk = r["by_kind"]
        layers = "ReLU outputs" if r["mode"] == "mask" else "all"
        ident = {None: "—", True: "yes", False: "**NO**"}[r["numpy_identical"]]
        lines.append(
            f"| {r['name']} | {layers} | {r['ratio']:.2f} "
            f"| {_fmt(bk.get('relu_conv', {}).get('ratio'), '.2f')} "
            f"| {_fmt(bk.get('conv', {}).get('ratio'), '.2f')} "
            f"| {r['rel_rmse']:.4f} | {r['max_abs_err']:.4g} "
            f"| {r['compress_mbps']:.0f} | {r['decompress_mbps']:.0f} "
            f"| {_fmt(r['numpy_compress_mbps'], '.1f')} "
            f"| {_fmt(r['numpy_decompress_mbps'], '.1f')} "
            f"| {ident} |")
    return "\n".join(lines)


def render_layers(layers: list[dict]) -> str:
    lines = ["| layer | kind | shape | MB | std | zeros |", "|---|---|---|---|---|---|"]
    lines += [f"| {la['name']} | {la['kind']} | {'×'.join(map(str, la['shape']))} "
              f"| {la['bytes'] / _MB:.3f} | {la['std']:.3f} | {la['zero_fraction']:.0%} |"
              for la in layers]
    return "\n".join(lines)


def render_markdown(result: dict) -> str:
    m, c, d = result["meta"], result["config"], result["data"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    out = [
        "## Codec: ratio, error, throughput (`actpack bench codec`)",
        "",
        f"Measured {m['date']} on {m['nproc']} cores ({m['cpu']}), torch {m['torch']} "
        f"({c['threads']} threads), numpy {m['numpy']}, Python {m['python']}; {libs}. "
        f"{_load_note(m)} {_source_note(m)}"
        + (" **Quick run (--quick): figures are not representative.**" if c["quick"] else ""),
        "",
        f"Data: activations of `{d['model']}` after {c['train_steps']} training steps (seed 0, "
        f"test accuracy {c['test_accuracy']:.1%}), captured on {c['batch']} test digits: "
        f"{d['total_bytes'] / _MB:.1f} MB of float32. Pooled σ = {d['sigma']:.4f}; the absolute "
        "error bounds of the eb, SZ3 and ZFP rows are "
        + ", ".join(f"{b:g} (≈{f:g}σ)" for b, f in zip(d["error_bounds"], d["eb_factors"],
                                                      strict=True)) + ".",
        "",
        render_layers(d["layers"]),
    ]
    out += [
        "",
        render_table(result),
        "",
        ("ratio = input bytes / frame bytes (compressed bytes for the references), over all "
        "layers and per kind (relu_conv: ReLU outputs fed by a conv; conv: conv outputs before "
        "the ReLU). rel. RMSE = RMSE / std of the input, pooled over the row's layers; the mask "
        "row covers the ReLU outputs only and its error is against 1[x > 0]. C/D MB/s = 10⁶ "
        f"bytes of float32 input per second: every layer's best of {c['repeats']} rounds, "
        "summed; the rows take turns within each round, so that other work on the machine hits "
        "them alike. C/D is the torch path for actpack rows, the library for reference rows "
        "(zstd level 3 lossless, SZ3 absolute bound via "
        "pysz, ZFP fixed accuracy via zfpy). The numpy model (the format's definition; a "
        f"pure-Python entropy coder) is timed on the first {c['numpy_subset_images']} image(s) "
        f"of every layer ({c['numpy_subset_bytes'] / _MB:.2f} MB, best of "
        f"{c['numpy_repeats']}); \"numpy = torch\" compares its frames with the torch path's "
        "byte for byte on that subset."),
        "",
    ]
    s2 = result.get("second_model")
    if s2:
        out += [
            f"Second model: `{s2['model']}`, same training and capture (test accuracy "
            f"{s2['test_accuracy']:.1%}), its conv and ReLU outputs "
            f"({s2['total_bytes'] / _MB:.1f} MB, pooled σ = {s2['sigma']:.4f}; bounds "
            + ", ".join(f"{b:g}" for b in s2["error_bounds"]) + "):",
            "",
            render_layers(s2["layers"]),
            "",
            render_table(result, s2["rows"]),
            "",
        ]
    out += [
        "Targets:",
        "",
    ]
    for t in result["targets"]:
        out.append(f"- {_verdict(t['pass'])}: {t['name']} — {_target_value(t)}")
    failed = [ch for ch in result["checks"] if not ch["pass"]]
    n_checks = len(result["checks"])
    out += ["", (f"Checks: {n_checks - len(failed)}/{n_checks} pass (numpy bytes == torch bytes "
                 "on every actpack row; eb and SZ3 max error within the bound).")]
    for ch in failed:
        out.append(f"- FAIL: {ch['name']}")
    if result["missing_references"]:
        out += ["", "Not installed, rows skipped: " + ", ".join(result["missing_references"])]
    return "\n".join(out) + "\n"


def _load_note(m: dict) -> str:
    a, b = m.get("loadavg_1min"), m.get("loadavg_1min_end")
    if a is None or b is None:
        return ""
    return (f"1-minute load average {a:.1f} at the start, {b:.1f} at the end (other work on "
            "the machine lowers every throughput figure).")


def _source_note(m: dict) -> str:
    src = m.get("source") or {}
    if not src.get("commit"):
        return ""
    dirty = " plus uncommitted changes to actpack/codec" if src.get("codec_modified") else ""
    return f"Source: commit {src['commit']}{dirty}."


def _target_value(t: dict) -> str:
    if t["threshold"] is None:
        return f"measured {t['value']:.3g} (no SZ3 row)"
    if "beats" in t["name"]:
        return f"{t['value']:.3g} vs {t['threshold']:.3g}"
    if "SZ3's" in t["name"]:  # eb2's targets: the threshold is SZ3's figure (x 1.2 for ratios)
        return f"measured {t['value']:.3g}, threshold {t['threshold']:.3g}"
    return f"measured {t['value']:.3g}"


def run(args: argparse.Namespace) -> int:
    quick = args.quick
    batch = args.batch or (8 if quick else 64)
    steps = args.train_steps if args.train_steps is not None else (5 if quick else 100)
    repeats = args.repeats or (1 if quick else 5)
    numpy_mb = args.numpy_mb if args.numpy_mb is not None else 1.0
    if quick and args.numpy_mb is None:
        numpy_mb = 0.0  # one image
    result = collect(batch=batch, train_steps=steps, repeats=repeats, numpy_mb=numpy_mb,
                     threads=args.threads, quick=quick)
    md = render_markdown(result)
    print(md)
    publish(args, "codec", md, result)
    bad_checks = [ch for ch in result["checks"] if not ch["pass"]]
    missed = [t for t in result["targets"] if t["pass"] is False]
    for ch in bad_checks:
        print(f"CHECK FAILED: {ch['name']}", file=sys.stderr)
    if bad_checks:
        return 2
    return 1 if (args.strict and missed) else 0
