"""``actpack demo`` (what ``make demo`` runs): train a small CNN with and without actpack.

1. ``train`` the digits CNN (``actpack.data``) twice from the same weights, data order and seed:
   once plainly, once inside ``actpack.offload(policy="auto")``; print test accuracy, saved
   activation bytes per step and step time of both, and the per-layer table of one step;
2. ``--device sim`` (or any device name): a few steps on that device next to the reference
   model, showing that gradients and stored frames agree byte for byte;
3. the codec on the trained model's activations: every mode on every layer, ratio and error
   (``compress_all``), and the numpy reference model against the torch path (``check_numpy``);
4. ``plot_offload`` / ``plot``: docs/demo.png (loss curves, saved memory over one step, per
   layer) and docs/demo-codec.png (ratio per layer and mode, one activation map per mode).

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from actpack import Codec, decompress
from actpack.data import (
    capture_activations,
    digits_batch,
    digits_cnn,
    layer_kinds,
    train_digits,
)
from actpack.paths import docs_dir

__all__ = ["MODES", "add_arguments", "check_device", "check_numpy", "compress_all", "plot",
           "plot_offload", "run", "train", "train_both"]

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
    p.add_argument("--device", default="ref",
                   help="where offload compresses: 'ref' (software model, default), "
                        "'xdma:/dev/xdma0' (a card), 'model' (the card's behavioural model), "
                        "'sim' (the RTL card under Verilator: too slow to train on, the demo "
                        "trains on 'ref' and runs 2 steps on it); another device also runs a "
                        "few steps next to 'ref' and checks they agree bit for bit")
    p.add_argument("--policy", default="auto", help="offload policy (default 'auto')")
    p.add_argument("--no-codec", action="store_true",
                   help="skip the per-mode codec table on the trained model's activations")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="where the figure goes (default: docs/demo.png of the checkout; the "
                        "codec figure goes beside it as demo-codec.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the figures")


CHECK_ONLY = ("sim",)  # devices too slow to train the demo on: checked for a few steps instead


def train(steps: int, seed: int, *, session=None, desc: str = "train digits"):
    """The digits CNN trained ``steps`` steps (linear rate decay), inside ``session`` if given."""
    model = digits_cnn(seed=seed)
    result = train_digits(model, steps, seed, lr=3e-3, lr_decay=True, session=session,
                          desc=desc)
    return model, result


def train_both(steps: int, seed: int, *, device: str = "ref", policy="auto"):
    """Train without and with ``actpack.offload``; returns (model, result) of both and the
    offload session (its stats cover every step)."""
    import actpack

    plain = train(steps, seed, desc="without actpack")
    session = actpack.offload(device=device, policy=policy)
    packed = train(steps, seed, session=session, desc=f"with actpack ({device})")
    return plain, packed, session


def one_step_session(model, seed: int, *, device: str = "ref", policy="auto"):
    """One more training step of ``model`` in a fresh session, for its timeline and table."""
    import actpack

    session = actpack.offload(device=device, policy=policy)
    train_digits(model, 1, seed + 1, session=session, progress=False)
    return session


def step_peaks(model, batch: int, *, device: str = "ref", policy="auto") -> tuple[int, int]:
    """The process-level peak of tensor memory of one forward and backward of ``model`` on
    ``batch`` digits, without and with offload (``host.peak.step_peak``: forward's live
    tensors, gradients and the codec's temporaries included)."""
    import actpack
    from actpack.host.peak import step_peak

    x, y = digits_batch(batch).x, torch.arange(batch) % 10

    def loss(out):
        return nn.functional.cross_entropy(out, y)

    return (step_peak(model, x, loss_fn=loss),
            step_peak(model, x, loss_fn=loss,
                      session=actpack.offload(device=device, policy=policy)))


def check_device(device, seed: int, steps: int = 3, batch: int = 16) -> list[str]:
    """``steps`` training steps (``batch`` digits) on ``device`` (a name or a ``Device``, opened
    once) and on "ref" from the same weights and data; returns what differs (gradients bit for
    bit, stored bytes per tensor; empty: all agree)."""
    import actpack

    x = digits_batch(batch).x
    y = torch.arange(batch) % 10
    dev = actpack.open_device(device) if isinstance(device, str) else device
    problems = []
    try:
        for step in range(steps):
            runs = []
            for d in (dev, "ref"):
                model = digits_cnn(seed=seed + step)
                session = actpack.offload(device=d, policy=actpack.Policy.auto(min_bytes=0))
                with session:
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                runs.append(({n: p.grad for n, p in model.named_parameters()},
                             [(t.label, t.mode, t.stored_bytes) for t in session.stats.tensors]))
            (g_dev, s_dev), (g_ref, s_ref) = runs
            problems += [f"step {step}: gradient of {n} differs" for n in g_ref
                         if not torch.equal(g_dev[n], g_ref[n])]
            if s_dev != s_ref:
                problems.append(f"step {step}: stored tensors differ: {s_dev} vs {s_ref}")
    finally:
        if dev is not device and hasattr(dev, "close"):
            dev.close()
    return problems


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


def plot_offload(plain, packed, step_session, path: Path) -> Path:
    """docs/demo.png: loss per step of both runs, saved-tensor memory over one step, and raw
    vs stored bytes per layer (log scale)."""
    from matplotlib.figure import Figure

    from actpack.host.stats import draw_timeline

    (_, r_plain), (_, r_packed) = plain, packed
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(r_plain.losses, label=f"without actpack: test {r_plain.test_accuracy:.1%}", lw=1)
    ax.plot(r_packed.losses, label=f"with actpack: test {r_packed.test_accuracy:.1%}", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("digits CNN, same seed and data order")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    st = step_session.stats
    draw_timeline(fig.add_subplot(1, 3, 2), st,
                  title=f"one step: peak {st.peak_raw_bytes / 2**20:.1f} -> "
                        f"{st.peak_resident_bytes / 2**20:.2f} MiB resident "
                        f"({st.ratio:.1f}x fewer bytes saved)")
    ax = fig.add_subplot(1, 3, 3)
    layers = [ls for ls in st.layers if ls.raw_bytes >= 4096]
    xs = range(len(layers))
    ax.bar([x - 0.2 for x in xs], [ls.raw_bytes / 1024 for ls in layers], 0.4, label="raw")
    ax.bar([x + 0.2 for x in xs], [ls.stored_bytes / 1024 for ls in layers], 0.4,
           label="stored")
    ax.set_xticks(list(xs), [f"{ls.layer or '-'}\n{ls.op}\n{ls.mode.split(':')[0]}"
                             for ls in layers], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("KiB per step")
    ax.set_title("per layer (policy auto)")
    ax.legend(fontsize="small")
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


def _median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds[len(seconds) // 10:] or seconds or [math.nan])


def _run(args, steps: int, batch: int) -> int:
    import actpack

    t0 = time.perf_counter()
    check = None  # the device checked next to 'ref', opened once
    if args.device != "ref":
        try:
            check = actpack.open_device(args.device)
        except actpack.OffloadError as exc:
            print(f"actpack demo: {exc}")
            return 2
    try:
        return _train_and_report(args, steps, batch, check, t0)
    finally:
        if hasattr(check, "close"):
            check.close()


def _train_and_report(args, steps: int, batch: int, check, t0: float) -> int:

    # the RTL under simulation runs thousands of times slower than a card: check it, train on ref
    train_on = "ref" if args.device.partition(":")[0] in CHECK_ONLY else check or "ref"
    check_steps, check_batch = (2, 2) if train_on == "ref" else (3, 16)
    shown = args.device if train_on is check else "ref"
    print(f"training the digits CNN for {steps} steps (seed {args.seed}), without and with "
          f"actpack.offload(device={shown!r}, policy={args.policy!r}) ...")
    plain, packed, session = train_both(steps, args.seed, device=train_on, policy=args.policy)
    (model, r_plain), (_, r_packed) = plain, packed
    st = session.stats
    per_step_raw, per_step_stored = st.raw_bytes / max(steps, 1), st.stored_bytes / max(steps, 1)
    ms_plain, ms_packed = _median_ms(r_plain.step_seconds), _median_ms(r_packed.step_seconds)
    # the peak is what a step needs; resident counts a tensor raw until its frame is made
    peak_plain, peak_packed = st.peak_raw_bytes, st.peak_resident_bytes
    print(f"\n{'':<16} {'test accuracy':>13} {'peak saved':>11} {'saved per step':>15} "
          f"{'step (median)':>14}")
    print(f"{'without actpack':<16} {r_plain.test_accuracy:>13.2%} "
          f"{peak_plain / 2**20:>7.2f} MiB {per_step_raw / 2**20:>11.2f} MiB "
          f"{ms_plain:>11.1f} ms")
    print(f"{'with actpack':<16} {r_packed.test_accuracy:>13.2%} "
          f"{peak_packed / 2**20:>7.2f} MiB {per_step_stored / 2**20:>11.2f} MiB "
          f"{ms_packed:>11.1f} ms")
    where = ("the software codec on the same CPU cores; a card takes that work off them"
             if train_on == "ref" else f"device {args.device!r}")
    print(f"peak of saved activations {peak_plain / max(peak_packed, 1):.2f}x lower "
          f"({st.ratio:.2f}x fewer bytes saved); accuracy "
          f"{100 * (r_packed.test_accuracy - r_plain.test_accuracy):+.2f} points; step time "
          f"x{ms_packed / ms_plain:.2f} ({where})\n")
    step_session = one_step_session(packed[0], args.seed, device=train_on, policy=args.policy)
    peak_plain, peak_packed = step_peaks(packed[0], batch, device=train_on, policy=args.policy)
    print(f"peak of all tensor memory in a training step (whole process, torch.profiler): "
          f"{peak_plain / 2**20:.2f} MiB without, {peak_packed / 2**20:.2f} MiB with actpack\n")
    print("one training step, per saved tensor:")
    step_session.report()

    bad = []
    if check is not None:
        t1 = time.perf_counter()
        problems = check_device(check, args.seed, steps=check_steps, batch=check_batch)
        if problems:
            print(f"\nMISMATCH between device {args.device!r} and the reference:")
            print("\n".join(f"  {p}" for p in problems))
            bad.append(args.device)
        else:
            print(f"\ndevice {args.device!r} == reference model: gradients bit for bit and the "
                  f"same stored bytes over {check_steps} steps of {check_batch} digits "
                  f"({time.perf_counter() - t1:.0f} s)")

    rows, acts = [], {}
    if not args.no_codec:
        acts = capture_activations(model, digits_batch(batch).x)
        kinds = layer_kinds(model)
        total = sum(t.numel() * t.element_size() for t in acts.values())
        print(f"\nthe codec on {len(acts)} activations of the trained model ({batch} test "
              f"digits, {total / 1e6:.1f} MB fp32), every mode:\n")
        t1 = time.perf_counter()
        rows = compress_all(acts, kinds)
        print_table(rows)
        print(f"(every layer compressed and decompressed in every mode in "
              f"{time.perf_counter() - t1:.0f} s)")
        t1 = time.perf_counter()
        mismatched = check_numpy(acts, kinds, images=1)
        if mismatched:
            print(f"\nMISMATCH: numpy model and torch path differ on {mismatched}")
            bad += mismatched
        else:
            print(f"\nnumpy reference model == torch path, byte for byte, on the first image of "
                  f"every layer ({len(MODES)} modes; {time.perf_counter() - t1:.0f} s)")

    if not args.no_plot:
        path = Path(args.plot or docs_dir() / "demo.png")
        print(f"wrote {plot_offload(plain, packed, step_session, path)}")
        if rows:
            print(f"wrote {plot(rows, acts, path.with_name(path.stem + '-codec' + path.suffix))}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0
