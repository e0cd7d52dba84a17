"""`imgtrain bench`: the seed notes' code against imgtrain's path, on the same models and data, in one process.

Run: `make bench` (all sections, writes benchmarks/results.json and benchmarks/results.md) or
`imgtrain bench --quick` (small sizes, ~2 min: checks that everything runs, not the speed).

Epochs of the two sides alternate (A, B, A, B, ...) so that a machine whose speed drifts (a shared 2-core VM here
swings between ~3,000 and ~5,000 img/s on one job) hurts both alike; throughput is the median over the epochs after
the first (warm-up). Side A is the seed code as the notes write it: float pixels divided by 255 in NumPy, a
Sequential model, `fit(x, y, batch_size=...)` with Keras' defaults. Side B is imgtrain: uint8 batches in a
(seed, epoch) order, the rescale inside the model, bfloat16 compute, a larger batch with a one-cycle schedule.
The "step alone" figure feeds imgtrain's model one fixed in-memory batch, over and over: the ceiling of any
training loop for that model here, which tells how much of a gap is the input pipeline and how much the kernels.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from .auto import cpu_info
from .notes import seed000_model, seed004_model


# imgtrain's settings for the seed models (side B); the learning rate is scaled with the batch
FAST = dict(precision="mixed_bfloat16", batch_size=256, schedule="onecycle", learning_rate=3e-3, seed=0)


def matmul_flops(n: int = 4096, dtype: str = "float32", repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n matmul: the ceiling that a CNN's convolutions can approach."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    tf.linalg.matmul(a, a).numpy()  # warm-up: oneDNN picks its kernel here
    best = min(_timed(lambda: tf.linalg.matmul(a, a).numpy()) for _ in range(repeats))
    return 2 * n ** 3 / best


def forward_flops(model) -> float:
    """FLOPs of one image's forward pass through the Conv2D and Dense layers (a multiply-add counts 2)."""
    import keras

    total = 0.0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c_out = layer.output.shape
            total += 2.0 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


# ----- the seed notes' code (side A) -----

# ----- the pieces that time things -----

def training_pair(name: str, dataset: str, epochs: int, limit: int | None, log) -> dict:
    """Seed code (A) and imgtrain (B) trained in alternating epochs on the same data; test accuracy of each."""
    import keras

    from .backend import precision
    from .batchnorm import fused_batchnorm
    from .callbacks import EpochStats
    from .config import make_config
    from .data import load_dataset
    from .evaluate import predict_arrays
    from .models import build_model
    from .schedules import make_optimizer
    from .train import compile_model, fit_inputs

    ds = load_dataset(dataset, val_split=0.0, train_limit=limit, test_limit=limit and max(1000, limit // 6))
    x, y, xt, yt = ds.train.x, ds.train.y, ds.test.x, ds.test.y
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
    steps = math.ceil(len(x) / cfg.batch_size)
    onehot = compile_model(model, cfg, ds.num_classes, make_optimizer(cfg, steps))
    batches = fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, {})
    seconds_a, seconds_b, seconds_c = [], [], []  # of each epoch, timed inside fit by EpochStats
    for epoch in range(epochs):
        for m, batch, seconds in ((seed_model, seed_batch, seconds_a), (like_model, cfg.batch_size, seconds_c)):
            seconds += m.fit(xa, seed_y, batch_size=batch, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                             callbacks=[EpochStats()]).history["epoch_seconds"]
        with fused_batchnorm("tensorflow"):  # imgtrain's train step (traced at its first fit) uses the fused kernel
            seconds_b += model.fit(batches, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                                   callbacks=[EpochStats()]).history["epoch_seconds"]
        log(f"  {name} epoch {epoch + 1}/{epochs}: seed {len(x) / seconds_a[-1]:,.0f} img/s, seed with imgtrain's "
            f"settings {len(x) / seconds_c[-1]:,.0f} img/s, imgtrain {len(x) / seconds_b[-1]:,.0f} img/s")
    rate = lambda seconds: len(x) / statistics.median(seconds[1:] or seconds)  # noqa: E731
    acc_a = float((seed_model.predict(xta, verbose=0).argmax(1) == yt).mean())
    acc_b = float((predict_arrays(model, xt).argmax(1) == yt).mean())
    out = {"dataset": dataset, "train_images": int(len(x)), "test_images": int(len(xt)), "epochs": epochs,
           "seed": {"batch_size": seed_batch, "images_per_s": rate(seconds_a), "test_accuracy": acc_a,
                    "epoch_s": seconds_a},
           "seed_like_imgtrain": {"batch_size": cfg.batch_size, "precision": cfg.precision,
                                  "images_per_s": rate(seconds_c), "epoch_s": seconds_c,
                                  "test_accuracy": float((like_model.predict(xta, verbose=0).argmax(1) == yt).mean())},
           "imgtrain": {**ours, **FAST, "images_per_s": rate(seconds_b), "test_accuracy": acc_b,
                        "epoch_s": seconds_b},
           "mflop_per_train_image": 3 * forward_flops(seed_model) / 1e6}  # backward ~2x forward
    out["speedup"] = out["imgtrain"]["images_per_s"] / out["seed"]["images_per_s"]
    out["settings_speedup"] = out["seed_like_imgtrain"]["images_per_s"] / out["seed"]["images_per_s"]
    with fused_batchnorm("tensorflow"):
        out["imgtrain"]["step_only_images_per_s"] = step_rate(model, *batches[0])
    out["step_only_speedup"] = out["imgtrain"]["step_only_images_per_s"] / out["seed"]["images_per_s"]
    out["inference"] = inference_pair(seed_model, xta, model, xt)
    return out


def step_rate(model, x, y, steps: int = 40) -> float:
    """Images/s of the model's compiled train step alone: one batch, converted to tensors once, fed `steps` times
    after a warm-up step. No input pipeline, callbacks or epoch bookkeeping: the most any training loop could
    reach with this model, batch size and precision here. It trains the model further (call it last)."""
    import keras

    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    model.train_on_batch(x, y)
    seconds = _timed(lambda: [model.train_on_batch(x, y) for _ in range(steps)])
    return steps * len(x) / seconds


def inference_pair(seed_model, seed_x, model, x, repeats: int = 3) -> dict:
    """Images/s of `model.predict` as the notes call it (batch 32) against imgtrain's `predict_arrays` (batch
    1024, bfloat16), best of `repeats` after a warm-up call."""
    from .evaluate import predict_arrays

    def best_rate(fn):
        fn()
        return len(x) / min(_timed(fn) for _ in range(repeats))

    return {"seed_images_per_s": best_rate(lambda: seed_model.predict(seed_x, verbose=0)),
            "imgtrain_images_per_s": best_rate(lambda: predict_arrays(model, x, 1024))}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----- time to accuracy: cold `imgtrain train --preset NAME` processes -----

def preset_runs(names: list[str], repeats: int, log) -> dict:
    import subprocess
    import sys

    from .presets import PRESETS

    out = {}
    for name in names:
        runs = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "stderr", "w+") as err:
                cmd = [sys.executable, "-m", "imgtrain.cli", "train", "--preset", name, "--out", f"{tmp}/run",
                       "--set", "verbose=quiet"]
                t = time.perf_counter()
                proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)  # a file: no pipe to fill
                wall = time.perf_counter() - t
                if proc.returncode:
                    err.seek(0)
                    raise RuntimeError(f"preset {name} failed: {err.read().strip().splitlines()[-1:]}")
                metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
                info = json.loads((Path(tmp) / "run" / "run.json").read_text())
            runs.append({"wall_s": wall, "test_accuracy": metrics["test_accuracy"],
                         "peak_rss_mib": info.get("peak_rss_mib")})  # the child's own VmHWM
            log(f"  preset {name} run {i + 1}/{repeats}: {metrics['test_accuracy']:.4f} in {wall:.1f} s")
        target = PRESETS.get(name).get("target")
        out[name] = {"target": target, "runs": runs,
                     "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                     "median_test_accuracy": statistics.median(r["test_accuracy"] for r in runs)}
    return out


# ----- the whole benchmark -----

SECTIONS = ("training", "folder", "transfer", "explain", "process")  # `--section`: what a run of the bench measures


def run_bench(quick: bool = False, presets: list[str] | None = None, repeats: int = 3, log=print,
              sections=SECTIONS) -> dict:
    import keras
    import tensorflow as tf

    cpu, flags = cpu_info()
    result = {"date": time.strftime("%Y-%m-%d"), "quick": quick,
              "machine": {"cpu": cpu, "cores": os.cpu_count(), "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
                          "python": platform.python_version(), "keras": keras.__version__,
                          "tensorflow": tf.__version__}}
    if "training" in sections:
        n = 2048 if quick else 4096
        result["matmul_gflops"] = {"float32": matmul_flops(n, "float32") / 1e9,
                                   "bfloat16": matmul_flops(n, "bfloat16") / 1e9}
        log(f"matmul {n}x{n}: {result['matmul_gflops']['float32']:.0f} GFLOP/s float32, "
            f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s bfloat16")
        result["training"] = training_pairs(quick, result["matmul_gflops"], log)
    if "folder" in sections:
        from .bench_folder import folder_pipeline

        log("folder pipeline")
        result["folder"] = folder_pipeline(600 if quick else 3000, 64 if quick else 480, log)
    if "transfer" in sections:
        from .bench_transfer import transfer_bench

        result["transfer"] = {"date": result["date"], "machine": result["machine"], **transfer_bench(quick, log)}
    if "explain" in sections:
        result["explain"] = {"date": result["date"], "machine": result["machine"], **explain_speed(log)}
    if "process" in sections:
        from .bench_process import process_bench

        log("whole processes: the notes' scripts against imgtrain train")
        result["process"] = {"date": result["date"], "machine": result["machine"], **process_bench(quick, log)}
    if presets:
        log("time to accuracy (cold processes)")
        result["presets"] = preset_runs(presets, repeats, log)
    from .resources import peak_rss_mib

    result["peak_rss_mib"] = peak_rss_mib()  # of this process: both sides' models and data
    return result


def training_pairs(quick: bool, gflops: dict, log) -> dict:
    epochs, limit = (2, 6000) if quick else (5, None)
    out = {}
    for name, dataset in (("seed000", "mnist"), ("seed004", "fashion_mnist")):
        log(f"{name} on {dataset}: {epochs} epochs each, alternating")
        pair = training_pair(name, dataset, epochs, limit, log)
        for side, peak in (("seed", "float32"), ("imgtrain", "bfloat16")):
            pair[side]["peak_fraction"] = (pair[side]["images_per_s"] * pair["mflop_per_train_image"] * 1e6
                                           / (gflops[peak] * 1e9))
        out[name] = pair
    return out


def explain_speed(log, repeats: int = 20) -> dict:
    """Heatmaps (the default method, HiResCAM) of seed 000's CNN as imgtrain builds it (cnn_small) on MNIST test
    images: seconds for one image and for a batch of 64, best of `repeats` after a warm-up call of each size."""
    from .data import load_dataset
    from .heatmaps import Explainer
    from .models import build_model

    x = load_dataset("mnist", val_split=0, train_limit=64, test_limit=64).test.x[:64]
    explainer = Explainer(build_model("cnn_small", (28, 28, 1), 10))
    out = {"model": "cnn_small", "method": explainer.method}
    for name, batch in (("one_image_s", x[:1]), ("batch_64_s", x)):
        explainer(batch)  # traces the step for this batch size
        out[name] = min(_timed(lambda: explainer(batch)) for _ in range(repeats))
    log(f"heatmaps: one image {out['one_image_s'] * 1e3:.1f} ms, a batch of 64 {out['batch_64_s'] * 1e3:.0f} ms")
    return out


def merged(result: dict, earlier: dict | None) -> dict:
    """`result` with the sections it did not measure taken from an earlier results.json (`--section` runs one
    part of the bench without losing the others' tables); each keeps the date it was measured."""
    if not earlier:
        return result
    kept = {k: v for k, v in earlier.items() if k not in result and k in (*SECTIONS, "matmul_gflops", "presets")}
    if "training" in kept:  # the header's date and machine are those of the seed tables
        kept.update({k: earlier[k] for k in ("date", "machine", "quick") if k in earlier})
    return {**result, **kept}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, bfloat16 "
             f"{'yes' if m['bf16'] else 'no'}), Keras {m['keras']}, TensorFlow {m['tensorflow']}"
             + (" — quick mode, small sizes" if result["quick"] else "") + "."]
    if "training" in result:
        lines += training_markdown(result)
    if "folder" in result:
        from .bench_folder import markdown as folder_markdown

        lines += folder_markdown(result["folder"])
    if "transfer" in result:
        from .bench_transfer import markdown as transfer_markdown

        lines += transfer_markdown(result["transfer"])
    if "explain" in result:
        e = result["explain"]
        where = e.get("machine", {}).get("cpu", "?")
        lines += ["", f"Heatmaps ({e['method']}, seed 000's CNN as `{e['model']}`, 28×28, measured {e['date']} on "
                      f"{where}): one "
                      f"image {e['one_image_s'] * 1e3:.1f} ms, a batch of 64 {e['batch_64_s'] * 1e3:.0f} ms "
                      "(after a warm-up call, best of 20)."]
    if "process" in result:
        from .bench_process import markdown as process_markdown

        lines += process_markdown(result["process"])
    if result.get("presets"):
        lines += ["", "Time to accuracy, cold `imgtrain train --preset NAME` (median of "
                  f"{len(next(iter(result['presets'].values()))['runs'])} runs):", "",
                  "| preset | target | median test acc | median wall s | peak RSS MiB |", "|---|---|---|---|---|"]
        for name, p in result["presets"].items():
            t = p["target"] or {}
            lines.append(f"| `{name}` | {t.get('accuracy', '-')} in ≤ {t.get('seconds', '-')} s | "
                         f"{p['median_test_accuracy']:.4f} | {p['median_wall_s']:.1f} | "
                         f"{max(r['peak_rss_mib'] or 0 for r in p['runs']):,.0f} |")
    lines += ["", f"Peak RSS of the benchmark process: {result['peak_rss_mib'] or 0:,.0f} MiB."]
    return "\n".join(lines)


def training_markdown(result: dict) -> list[str]:
    lines = [f"Matmul ceiling: {result['matmul_gflops']['float32']:.0f} GFLOP/s float32, "
             f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s bfloat16.", "",
             "| job | seed code img/s | seed code, imgtrain's settings img/s (× seed) | imgtrain img/s | speed-up | "
             "imgtrain step alone img/s (× seed) | test acc (seed / seed with settings / imgtrain) | "
             "share of peak (seed / imgtrain) | inference img/s (seed / imgtrain) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, p in result["training"].items():
        a, b, c, inf = p["seed"], p["imgtrain"], p["seed_like_imgtrain"], p["inference"]
        alone = f"{b['step_only_images_per_s']:,.0f} ({p['step_only_speedup']:.2f}×)"
        lines.append(f"| {name} ({p['dataset']}, {p['epochs']} epochs) | {a['images_per_s']:,.0f} | "
                     f"{c['images_per_s']:,.0f} ({p['settings_speedup']:.2f}×) | {b['images_per_s']:,.0f} | "
                     f"**{p['speedup']:.2f}×** | {alone} | {a['test_accuracy']:.4f} / {c['test_accuracy']:.4f} / "
                     f"{b['test_accuracy']:.4f} | {a['peak_fraction']:.0%} / {b['peak_fraction']:.0%} | "
                     f"{inf['seed_images_per_s']:,.0f} / {inf['imgtrain_images_per_s']:,.0f} |")
    lines += ["", f"imgtrain's settings: {FAST['precision']}, batch {FAST['batch_size']}, one-cycle schedule; the "
                  "middle column runs the note's own code with the same dtype and batch size, so the gap between it "
                  "and imgtrain is what imgtrain's path adds (uint8 batches, the fused BatchNorm, the loop)."]
    return lines
