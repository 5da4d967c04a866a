"""``actpack demo`` (what ``make demo`` runs): compress the real activations of a small CNN.

Steps, each a function so later demos can reuse or replace them:

1. ``train`` the digits CNN (``actpack.data``) for a few hundred steps and report test accuracy;
2. ``capture_activations`` of its conv, ReLU and linear layers on a batch of test digits;
3. ``compress_all``: every codec mode (torch path) on every layer: ratio and error;
4. ``check_numpy``: the numpy reference model gives the same bytes on a subset;
5. ``plot``: docs/demo.png, ratio per layer and mode, and what one activation map looks like
   after each mode.

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from actpack import Codec, decompress
from actpack.bench import default_results_path
from actpack.data import (
    capture_activations,
    digits_batch,
    digits_cnn,
    layer_kinds,
    train_digits,
)

__all__ = ["MODES", "add_arguments", "check_numpy", "compress_all", "plot", "run", "train"]

EB_FACTOR = 0.02  # the eb mode's bound, as a fraction of each layer's std

# label -> Codec keyword arguments (eb's bound is filled in per layer)
MODES: dict[str, dict] = {
    "dct/optL": {"mode": "dct", "table": "optL"},
    "dct/optH": {"mode": "dct", "table": "optH"},
    "dct/optsL": {"mode": "dct", "table": "optsL"},
    "dct/optsH": {"mode": "dct", "table": "optsH"},
    "dct/jpeg50": {"mode": "dct", "table": "jpeg50"},
    f"eb/{EB_FACTOR:g}σ": {"mode": "eb"},
    "sfpr8": {"mode": "sfpr8"},
    "mask": {"mode": "mask"},  # ReLU outputs only: their backward needs nothing but x > 0
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: 20 training steps, batch of 8")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    p.add_argument("--batch", type=int, default=None,
                   help="test images the activations are captured on (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="where the figure goes (default: docs/demo.png of the checkout)")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")


def train(steps: int, seed: int):
    model = digits_cnn(seed=seed)
    result = train_digits(model, steps, seed)
    return model, result


def codec_for(label: str, x: torch.Tensor, backend: str = "torch") -> Codec:
    kwargs = dict(MODES[label])
    if kwargs["mode"] == "eb":
        std = float(x.double().std())
        kwargs["error_bound"] = float(f"{EB_FACTOR * std:.3g}") if std > 0 else 1e-3
    return Codec(backend=backend, **kwargs)


def applies(label: str, kind: str) -> bool:
    return MODES[label]["mode"] != "mask" or kind.startswith("relu")


def compress_all(acts: dict[str, torch.Tensor], kinds: dict[str, str]) -> list[dict]:
    """Every mode on every layer it applies to (torch path): one dict per (layer, mode) with
    shape, ratio, rel. RMSE (RMSE / std of the input; for mask against 1[x > 0]), max abs error
    and the decoded tensor (key ``y``)."""
    rows = []
    for name, x in acts.items():
        for label in MODES:
            if not applies(label, kinds[name]):
                continue
            codec = codec_for(label, x)
            frame = codec.compress(x)
            y = codec.decompress(frame)
            target = (x > 0).to(x.dtype) if codec.mode == "mask" else x
            diff = (y.double() - target.double())
            std = float(target.double().std())
            rmse = float(diff.square().mean().sqrt())
            rows.append({
                "layer": name, "kind": kinds[name], "shape": tuple(x.shape), "mode": label,
                "codec": repr(codec), "input_bytes": x.numel() * x.element_size(),
                "frame_bytes": frame.nbytes, "ratio": x.numel() * x.element_size() / frame.nbytes,
                "rel_rmse": rmse / std if std > 0 else (0.0 if rmse == 0 else math.inf),
                "max_abs_err": float(diff.abs().max()), "y": y,
            })
    return rows


def check_numpy(acts: dict[str, torch.Tensor], kinds: dict[str, str], *, images: int = 1):
    """Compress the first ``images`` images of every layer with both backends in every mode;
    return the (layer, mode) pairs whose bytes or decoded values differ (empty: all identical)."""
    bad = []
    for name, x in acts.items():
        sub = x[:images].contiguous()
        for label in MODES:
            if not applies(label, kinds[name]):
                continue
            fast, ref = codec_for(label, x), codec_for(label, x, backend="numpy")
            f_fast, f_ref = fast.compress(sub), ref.compress(sub)
            y_fast, y_ref = fast.decompress(f_fast), decompress(f_ref, backend="numpy")
            if bytes(f_fast) != bytes(f_ref) or not torch.equal(
                    y_fast.view(torch.int32), y_ref.view(torch.int32)):
                bad.append((name, label))
    return bad


def print_table(rows: list[dict]) -> None:
    print(f"{'layer':<7} {'kind':<11} {'shape':<16} {'mode':<11} {'ratio':>7} {'rel.RMSE':>9}")
    last = None
    for r in rows:
        if last is not None and r["layer"] != last:
            print()
        last = r["layer"]
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['layer']:<7} {r['kind']:<11} {shape:<16} {r['mode']:<11} "
              f"{r['ratio']:>6.2f}x {r['rel_rmse']:>9.4f}")
    print("\nall layers together (mask: ReLU outputs only):")
    for label in MODES:
        sel = [r for r in rows if r["mode"] == label]
        ratio = sum(r["input_bytes"] for r in sel) / sum(r["frame_bytes"] for r in sel)
        print(f"  {label:<11} {ratio:6.2f}x")


def plot(rows: list[dict], acts: dict[str, torch.Tensor], path: Path) -> Path:
    """Bar chart of ratio per layer and mode, and one ReLU'd conv activation map as decoded by
    each mode. Uses matplotlib's Agg canvas (no display needed)."""
    from matplotlib.figure import Figure

    layers = list(acts)
    labels = list(MODES)
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 6, height_ratios=[3, 2])
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs, hs = [], []
        for i, name in enumerate(layers):
            hit = [r for r in rows if r["layer"] == name and r["mode"] == label]
            if hit:
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                hs.append(hit[0]["ratio"])
        ax.bar(xs, hs, width=width, label=label)
    ax.axhline(8.5, color="k", linestyle="--", linewidth=0.8)
    ax.text(len(layers) - 0.5, 8.5, " JPEG-ACT 8.5x", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(layers)),
                  [f"{n}\n{'x'.join(map(str, acts[n].shape))}" for n in layers], fontsize=8)
    ax.set_ylabel("compression ratio (fp32 bytes / frame bytes)")
    ax.set_title("actpack codec on the activations of a small CNN trained on digits")
    ax.legend(ncol=4, fontsize=8)

    name = next((n for n in layers if n.startswith("relu")), layers[0])
    x = acts[name]
    shown = [("original", x)] + [
        (label, r["y"]) for label in ("dct/optL", "dct/optH", f"eb/{EB_FACTOR:g}σ", "sfpr8",
                                      "mask")
        for r in rows if r["layer"] == name and r["mode"] == label
    ]
    # the busiest channel of the first image: dead (all-zero) ReLU channels make dull pictures
    plane = (0, int(x[0].flatten(1).std(1).argmax())) if x.dim() == 4 else None
    vmax = float(x[plane].abs().max()) if plane else 1.0
    for k, (label, t) in enumerate(shown[:6]):
        a = fig.add_subplot(grid[1, k])
        img = t[plane] if plane else t.reshape(-1)[:1024].reshape(32, 32)
        a.imshow(img.float().numpy(), cmap="magma", vmin=0, vmax=1.0 if label == "mask" else vmax)
        a.set_title(f"{name}[{plane[0]}, {plane[1]}]: {label}" if k == 0 and plane else label,
                    fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def run(args: argparse.Namespace) -> int:
    steps = args.steps if args.steps is not None else (20 if args.quick else 300)
    batch = args.batch or (8 if args.quick else 64)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, steps, batch)
    finally:
        torch.set_num_threads(old_threads)


def _run(args, steps: int, batch: int) -> int:
    t0 = time.perf_counter()
    print(f"training the digits CNN for {steps} steps (seed {args.seed}) ...")
    model, trained = train(steps, args.seed)
    print(f"final loss {trained.losses[-1] if trained.losses else float('nan'):.4f}, "
          f"train accuracy {trained.train_accuracy:.1%}, "
          f"test accuracy {trained.test_accuracy:.1%} ({time.perf_counter() - t0:.0f} s)")

    acts = capture_activations(model, digits_batch(batch).x)
    kinds = layer_kinds(model)
    total = sum(t.numel() * t.element_size() for t in acts.values())
    print(f"captured {len(acts)} activations on {batch} test digits: {total / 1e6:.1f} MB fp32\n")

    t1 = time.perf_counter()
    rows = compress_all(acts, kinds)
    print_table(rows)
    print(f"(every layer compressed and decompressed in every mode in "
          f"{time.perf_counter() - t1:.0f} s)")

    t1 = time.perf_counter()
    bad = check_numpy(acts, kinds, images=1)
    if bad:
        print(f"\nMISMATCH: numpy model and torch path differ on {bad}")
    else:
        print(f"\nnumpy reference model == torch path, byte for byte, on the first image of every "
              f"layer ({len(MODES)} modes; {time.perf_counter() - t1:.0f} s)")

    if not args.no_plot:
        path = args.plot or default_results_path().parent / "demo.png"
        print(f"wrote {plot(rows, acts, path)}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0
