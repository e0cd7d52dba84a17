"""The training section: the notes' code against imgtrain in alternating epochs, preset runs, heatmap speed."""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from imgtrain.bench.common import FAST, _timed, forward_flops, inference_pair, step_rate
from imgtrain.bench.notes import seed000_model, seed004_model

if TYPE_CHECKING:
    import numpy as np

    from imgtrain.data.dataset import Split


def training_pair(
    name: str, dataset: str, epochs: int, limit: int | None, log: Callable[[str], object]
) -> dict[str, Any]:
    """Seed code (A) and imgtrain (B) trained in alternating epochs on the same data; test accuracy of each."""
    import keras

    from imgtrain.analysis.evaluate import predict_arrays
    from imgtrain.core.backend import precision
    from imgtrain.core.config import make_config
    from imgtrain.data import load_dataset
    from imgtrain.models import build_model
    from imgtrain.training.batchnorm import fused_batchnorm
    from imgtrain.training.callbacks import EpochStats
    from imgtrain.training.fit import compile_model, fit_inputs
    from imgtrain.training.schedules import make_optimizer

    ds = load_dataset(dataset, val_split=0.0, train_limit=limit, test_limit=limit and max(1000, limit // 6))
    test = cast("Split", ds.test)  # mnist and fashion_mnist: a test set, images in memory
    x, y, xt, yt = cast("np.ndarray", ds.train.x), ds.train.y, cast("np.ndarray", test.x), test.y
    make_seed = seed000_model if name == "seed000" else seed004_model
    with precision(FAST["precision"]):  # the note's code with imgtrain's settings: its dtype and batch size
        like_model = make_seed()
    if name == "seed000":  # the note's preprocessing: float64 pixels / 255 in NumPy, sparse labels, batch 100
        seed_model, seed_batch, seed_y = seed000_model(), 100, y
        ours = dict(model="cnn_small")
    else:  # seed 004 on Fashion-MNIST: float32 / 255, one-hot labels, batch 200
        seed_model, seed_batch = seed004_model(), 200
        seed_y = keras.utils.to_categorical(y, 10)
        ours = dict(model="cnn_bn")
    xa = (x / 255.0) if name == "seed000" else x.astype("float32") / 255
    xta = (xt / 255.0) if name == "seed000" else xt.astype("float32") / 255

    cfg = make_config(dataset=dataset, epochs=epochs, val_split=0.0, monitor="loss", **ours, **FAST)
    with precision(cfg.precision):
        model = build_model(cfg.model, ds.input_shape, ds.num_classes)
    steps = math.ceil(len(x) / cast(int, cfg.batch_size))  # FAST sets a number
    onehot = compile_model(model, cfg, ds.num_classes, make_optimizer(cfg, steps))
    batches = fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, {})
    # of each epoch, timed inside fit by EpochStats
    seconds_a: list[float] = []
    seconds_b: list[float] = []
    seconds_c: list[float] = []
    for epoch in range(epochs):
        for m, batch, seconds in ((seed_model, seed_batch, seconds_a), (like_model, cfg.batch_size, seconds_c)):
            seconds += m.fit(
                xa, seed_y, batch_size=batch, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=[EpochStats()]
            ).history["epoch_seconds"]
        with fused_batchnorm("tensorflow"):  # imgtrain's train step (traced at its first fit) uses the fused kernel
            seconds_b += model.fit(
                batches, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0, callbacks=[EpochStats()]
            ).history["epoch_seconds"]
        log(
            f"  {name} epoch {epoch + 1}/{epochs}: seed {len(x) / seconds_a[-1]:,.0f} img/s, seed with imgtrain's "
            f"settings {len(x) / seconds_c[-1]:,.0f} img/s, imgtrain {len(x) / seconds_b[-1]:,.0f} img/s"
        )
    rate: Callable[[list[float]], float] = lambda seconds: len(x) / statistics.median(seconds[1:] or seconds)  # noqa: E731
    acc_a = float((seed_model.predict(xta, verbose=0).argmax(1) == yt).mean())
    acc_b = float((predict_arrays(model, xt).argmax(1) == yt).mean())
    out: dict[str, Any] = {
        "dataset": dataset,
        "train_images": int(len(x)),
        "test_images": int(len(xt)),
        "epochs": epochs,
        "seed": {
            "batch_size": seed_batch,
            "images_per_s": rate(seconds_a),
            "test_accuracy": acc_a,
            "epoch_s": seconds_a,
        },
        "seed_like_imgtrain": {
            "batch_size": cfg.batch_size,
            "precision": cfg.precision,
            "images_per_s": rate(seconds_c),
            "epoch_s": seconds_c,
            "test_accuracy": float((like_model.predict(xta, verbose=0).argmax(1) == yt).mean()),
        },
        "imgtrain": {**ours, **FAST, "images_per_s": rate(seconds_b), "test_accuracy": acc_b, "epoch_s": seconds_b},
        "mflop_per_train_image": 3 * forward_flops(seed_model) / 1e6,
    }  # backward ~2x forward
    out["speedup"] = out["imgtrain"]["images_per_s"] / out["seed"]["images_per_s"]
    out["settings_speedup"] = out["seed_like_imgtrain"]["images_per_s"] / out["seed"]["images_per_s"]
    with fused_batchnorm("tensorflow"):
        out["imgtrain"]["step_only_images_per_s"] = step_rate(model, *batches[0])
    out["step_only_speedup"] = out["imgtrain"]["step_only_images_per_s"] / out["seed"]["images_per_s"]
    out["inference"] = inference_pair(seed_model, xta, model, xt)
    return out


def preset_runs(names: list[str], repeats: int, log: Callable[[str], object]) -> dict[str, Any]:
    import subprocess
    import sys

    from imgtrain.core.presets import PRESETS

    out = {}
    for name in names:
        runs = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "stderr", "w+") as err:
                cmd = [
                    sys.executable,
                    "-m",
                    "imgtrain.cli",
                    "train",
                    "--preset",
                    name,
                    "--out",
                    f"{tmp}/run",
                    "--set",
                    "verbose=quiet",
                ]
                t = time.perf_counter()
                proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)  # a file: no pipe to fill
                wall = time.perf_counter() - t
                if proc.returncode:
                    err.seek(0)
                    raise RuntimeError(f"preset {name} failed: {err.read().strip().splitlines()[-1:]}")
                metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
                info = json.loads((Path(tmp) / "run" / "run.json").read_text())
            runs.append(
                {"wall_s": wall, "test_accuracy": metrics["test_accuracy"], "peak_rss_mib": info.get("peak_rss_mib")}
            )  # the child's own VmHWM
            log(f"  preset {name} run {i + 1}/{repeats}: {metrics['test_accuracy']:.4f} in {wall:.1f} s")
        target = PRESETS.get(name).get("target")
        out[name] = {
            "target": target,
            "runs": runs,
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_test_accuracy": statistics.median(r["test_accuracy"] for r in runs),
        }
    return out


def training_pairs(quick: bool, gflops: dict[str, float], log: Callable[[str], object]) -> dict[str, Any]:
    epochs, limit = (2, 6000) if quick else (5, None)
    out = {}
    for name, dataset in (("seed000", "mnist"), ("seed004", "fashion_mnist")):
        log(f"{name} on {dataset}: {epochs} epochs each, alternating")
        pair = training_pair(name, dataset, epochs, limit, log)
        for side, peak in (("seed", "float32"), ("imgtrain", "bfloat16")):
            pair[side]["peak_fraction"] = (
                pair[side]["images_per_s"] * pair["mflop_per_train_image"] * 1e6 / (gflops[peak] * 1e9)
            )
        out[name] = pair
    return out


def explain_speed(log: Callable[[str], object], repeats: int = 20) -> dict[str, Any]:
    """Heatmaps (the default method, HiResCAM) of seed 000's CNN as imgtrain builds it (cnn_small) on MNIST test
    images: seconds for one image and for a batch of 64, best of `repeats` after a warm-up call of each size."""
    from imgtrain.analysis.heatmaps import Explainer
    from imgtrain.data import load_dataset
    from imgtrain.models import build_model

    test = cast("Split", load_dataset("mnist", val_split=0, train_limit=64, test_limit=64).test)
    x = cast("np.ndarray", test.x)[:64]
    explainer = Explainer(build_model("cnn_small", (28, 28, 1), 10))
    out: dict[str, Any] = {"model": "cnn_small", "method": explainer.method}
    for name, batch in (("one_image_s", x[:1]), ("batch_64_s", x)):
        explainer(batch)  # traces the step for this batch size
        out[name] = min(_timed(lambda: explainer(batch)) for _ in range(repeats))
    log(f"heatmaps: one image {out['one_image_s'] * 1e3:.1f} ms, a batch of 64 {out['batch_64_s'] * 1e3:.0f} ms")
    return out


def training_markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Matmul ceiling: {result['matmul_gflops']['float32']:.0f} GFLOP/s float32, "
        f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s bfloat16.",
        "",
        "| job | seed code img/s | seed code, imgtrain's settings img/s (× seed) | imgtrain img/s | speed-up | "
        "imgtrain step alone img/s (× seed) | test acc (seed / seed with settings / imgtrain) | "
        "share of peak (seed / imgtrain) | inference img/s (seed / imgtrain) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in result["training"].items():
        a, b, c, inf = p["seed"], p["imgtrain"], p["seed_like_imgtrain"], p["inference"]
        alone = f"{b['step_only_images_per_s']:,.0f} ({p['step_only_speedup']:.2f}×)"
        lines.append(
            f"| {name} ({p['dataset']}, {p['epochs']} epochs) | {a['images_per_s']:,.0f} | "
            f"{c['images_per_s']:,.0f} ({p['settings_speedup']:.2f}×) | {b['images_per_s']:,.0f} | "
            f"**{p['speedup']:.2f}×** | {alone} | {a['test_accuracy']:.4f} / {c['test_accuracy']:.4f} / "
            f"{b['test_accuracy']:.4f} | {a['peak_fraction']:.0%} / {b['peak_fraction']:.0%} | "
            f"{inf['seed_images_per_s']:,.0f} / {inf['imgtrain_images_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"imgtrain's settings: {FAST['precision']}, batch {FAST['batch_size']}, one-cycle schedule; the "
        "middle column runs the note's own code with the same dtype and batch size, so the gap between it "
        "and imgtrain is what imgtrain's path adds (uint8 batches, the fused BatchNorm, the loop).",
    ]
    return lines
