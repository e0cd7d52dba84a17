"""`imgtrain bench`'s transfer section: fine-tuning a backbone on a folder of photos, imgtrain against the recipe of
Keras' transfer-learning guide (keras.io/guides/transfer_learning), on the same backbone, images, image size and
batch size.

The guide's recipe, as it writes it with a folder in place of its TFDS download: `image_dataset_from_directory`,
its augmentation (RandomFlip, RandomRotation) mapped over the images, then `.batch(64).prefetch().cache()` (so the
augmentation is drawn once and cached with the batches: its later epochs see fixed images too); the backbone called
with training=False under GlobalAveragePooling2D, Dropout(0.2) and Dense(1) on logits; `fit` with the backbone
frozen, then `trainable = True`, compile at Adam(1e-5) and `fit` again. Float32, as the guide runs. (Under Keras 3
its fine-tune `fit` runs the backbone's BatchNormalization in training mode, whatever training=False says:
keras-team/keras#20285; that is most of the fine-tune stage's difference. imgtrain holds them in inference mode, as
the guide means, and folds them into the convolutions: batchnorm.frozen_statistics.)

imgtrain's side is `imgtrain.train` itself, the run a user starts with
`--model BACKBONE --set weights=FILE --set freeze_epochs=K`: the frozen stage on cached features, then the whole
network with the backbone's BatchNormalization folded into its convolutions (batchnorm.frozen_statistics); once in
float32 (like for like) and once in mixed_bfloat16. The backbone's weights are random (a weights
file written here; no machine here reaches ImageNet's): speed does not depend on their values.

Epoch times come from each side's `fit` (EpochStats for the guide, history.csv for imgtrain); "later epochs" is
the median of a stage's epochs after its first (which traces the step). The peak-memory figure is a cold
`imgtrain train` process on a larger folder, with its peak RSS as run.json records it (VmHWM).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

BACKBONE = "mobilenet_v3_small"
BATCH = 64  # the guide's batch size
SOURCE_SIZE = (500, 375)  # width, height of the generated photos: a typical Dogs-vs-Cats JPEG


def weights_file(path: Path, size: int) -> Path:
    """A weights file of the backbone with random weights (what `--set weights=PATH` takes)."""
    from imgtrain.models.backbones import backbone_layer

    backbone_layer(BACKBONE, (size, size, 3), "none").save_weights(path)
    return path


def guide_run(
    root: Path, weights: Path, size: int, frozen: int, log: Callable[[str], object]
) -> tuple[dict[str, Any], keras.Model, tf.data.Dataset]:
    """The guide's recipe on the folder: its frozen `fit`, then the first epoch of its fine-tune `fit` (which traces
    the step, outside any imgtrain context). Returns (its figures, its model, its data): the later fine-tune
    epochs run alternated with imgtrain's (`alternate`)."""
    import keras
    import tensorflow as tf

    from imgtrain.models.backbones import backbone_layer
    from imgtrain.training.callbacks import EpochStats

    ds = keras.utils.image_dataset_from_directory(root, image_size=(size, size), batch_size=None, seed=0)
    augmentation = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)]

    def augment(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for layer in augmentation:
            x = layer(x)
        return x, y

    ds = ds.map(augment).batch(BATCH).prefetch(tf.data.AUTOTUNE).cache()
    base = backbone_layer(BACKBONE, (size, size, 3), str(weights))  # MobileNetV3 rescales its 0-255 input itself
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss, metrics=[keras.metrics.BinaryAccuracy()])
    first = model.fit(ds, epochs=frozen, verbose=0, callbacks=[EpochStats()]).history["epoch_seconds"]
    log(f"  guide frozen: {', '.join(f'{s:.1f}' for s in first)} s an epoch")
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=[keras.metrics.BinaryAccuracy()])
    second = model.fit(ds, epochs=1, verbose=0, callbacks=[EpochStats()]).history["epoch_seconds"]
    return {"precision": "float32", "frozen_epoch_s": first, "tune_epoch_s": second}, model, ds


def guide_epochs(guide: keras.Model, ds: tf.data.Dataset, epochs: int, warm_up: bool = False) -> list[float]:
    """Seconds of `epochs` more epochs of the guide's fine-tune `fit`. They run before and after imgtrain's run, not
    inside it: a `fit` nested in a callback of imgtrain's makes imgtrain's step retrace (measured: fine-tune epochs
    of 26 s against 8.4 s), and a drifting machine (this shared VM's speed moves by a third over minutes) weighs
    on the guide's epochs on both sides of imgtrain's. `warm_up`: one more epoch first, not counted: the first
    epoch after another model has run is slow, as a run's first is (measured at 640 images: 12.5 s, then 9.4
    and 9.3, against 9.0-10.3 before imgtrain's run)."""
    from imgtrain.training.callbacks import EpochStats

    history = guide.fit(ds, epochs=epochs + warm_up, verbose=0, callbacks=[EpochStats()]).history
    seconds: list[float] = history["epoch_seconds"]
    return seconds[1:] if warm_up else seconds


def imgtrain_run(
    root: Path,
    weights: Path,
    size: int,
    frozen: int,
    tuned: int,
    precision: str,
    out: Path,
    log: Callable[[str], object],
) -> dict[str, Any]:
    """imgtrain's run on the folder: epoch seconds of each stage, and the seconds its features took."""
    from imgtrain.training.run import train

    run = train(
        dataset=f"folder:{root}",
        model=BACKBONE,
        weights=str(weights),
        image_size=(size, size),
        freeze_epochs=frozen,
        epochs=frozen + tuned,
        batch_size=BATCH,
        precision=precision,
        val_split=0,
        monitor="loss",
        test_split=0,
        out=str(out),
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    with open(run.run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    seconds = {s: [float(r["epoch_seconds"]) for r in rows if int(float(r["stage"])) == s] for s in (1, 2)}
    found = re.search(
        r"frozen stage on cached features: (\d+) values an image, ([\d.]+) s", (run.run_dir / "train.log").read_text()
    )
    if not found:
        raise RuntimeError("imgtrain's frozen stage did not run on cached features")
    log(
        f"  imgtrain {precision}: features {found.group(2)} s, frozen {', '.join(f'{s:.2f}' for s in seconds[1])}"
        f" s, fine-tune {', '.join(f'{s:.1f}' for s in seconds[2])} s an epoch"
    )
    return {
        "precision": precision,
        "features_s": float(found.group(2)),
        "feature_values": int(found.group(1)),
        "frozen_epoch_s": seconds[1],
        "tune_epoch_s": seconds[2],
    }


def peak_rss_run(root: Path, weights: Path, size: int, out: Path, log: Callable[[str], object]) -> dict[str, Any]:
    """A cold `imgtrain train` process over the whole folder (one frozen epoch, one fine-tune epoch, the default
    validation and test splits): its wall time and peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "imgtrain.cli",
        "train",
        "--dataset",
        f"folder:{root}",
        "--model",
        BACKBONE,
        "--set",
        f"weights={weights}",
        "--set",
        f"image_size=[{size},{size}]",
        "--set",
        "freeze_epochs=1",
        "--epochs",
        "2",
        "--batch-size",
        str(BATCH),
        "--no-report",
        "--set",
        "tensorboard=false",
        "--set",
        "verbose=quiet",
        "--out",
        str(out),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"peak RSS run failed: {proc.stderr.strip().splitlines()[-1:]}")
    info = json.loads((out / "run.json").read_text())
    result = {
        "images": sum(info["data"]["sizes"].values()),
        "streamed": info["data"]["streamed"],
        "wall_s": wall,
        "peak_rss_mib": info.get("peak_rss_mib"),
    }
    log(
        f"  {result['images']:,} images ({'streamed' if result['streamed'] else 'in memory'}): "
        f"{wall:.0f} s, peak RSS {result['peak_rss_mib']:,.0f} MiB"
    )
    return result


def cold_decode_rate(root: Path, size: int, n: int, caches: list[Path]) -> float:
    """img/s of a first load of the folder (every file decoded): the median over `caches`, each a cold decode
    cache of its own (one load takes about a second, and this VM's speed varies from one second to the next)."""
    from imgtrain.bench.folder import using_data_dir
    from imgtrain.data import load_dataset
    from imgtrain.data.cache import wait_for_writes

    rates = []
    for cache in caches:
        with using_data_dir(cache):
            t = time.perf_counter()
            load_dataset(f"folder:{root}", image_size=(size, size), channels=3, val_split=0, test_split=0, stream=False)
            rates.append(n / (time.perf_counter() - t))
            wait_for_writes()  # the cache is written in the background: not part of the next load's time
    return statistics.median(rates)


def later(seconds: list[float]) -> float:
    """Median epoch seconds after a stage's first (which traces the train step). Five fine-tune epochs give four
    to take the median of: on this VM one epoch in five or so runs up to twice as long on either side (measured:
    imgtrain 5.2 s epochs with one of 9.9 s; the guide's vary 13-16 s), which a median of two would average in."""
    return statistics.median(seconds[1:] or seconds)


def transfer_bench(quick: bool, log: Callable[[str], object] = print) -> dict[str, Any]:
    from imgtrain.bench.folder import make_jpeg_folder, using_data_dir

    size, n, big, frozen, tuned = (96, 128, 300, 2, 2) if quick else (224, 1000, 10000, 3, 5)
    out: dict[str, Any] = {
        "backbone": BACKBONE,
        "batch_size": BATCH,
        "images": n,
        "source_size": list(SOURCE_SIZE),
        "size": [size, size],
        "frozen_epochs": frozen,
        "tune_epochs": tuned,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        root = make_jpeg_folder(tmp / "photos", n, size=SOURCE_SIZE)
        log(
            f"transfer: {n} JPEGs {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} written in {time.perf_counter() - t:.0f} s; "
            f"{BACKBONE} at {size}x{size}, batch {BATCH}"
        )
        weights = weights_file(tmp / "backbone.weights.h5", size)
        out["decode_images_per_s"] = cold_decode_rate(
            root, size, n, [tmp / "decode-0", tmp / "decode-1", tmp / "cache"]
        )
        log(f"  first-epoch decode {out['decode_images_per_s']:,.0f} img/s (median of 3 cold caches)")
        with using_data_dir(tmp / "cache"):
            out["guide"], guide, ds = guide_run(root, weights, size, frozen, log)
            tune_s, half = out["guide"]["tune_epoch_s"], max(1, tuned // 2)
            tune_s += guide_epochs(guide, ds, half)
            out["float32"] = imgtrain_run(root, weights, size, frozen, tuned, "float32", tmp / "f32", log)
            tune_s += guide_epochs(guide, ds, half, warm_up=True)
            log(
                f"  guide fine-tune: {', '.join(f'{s:.1f}' for s in tune_s)} s an epoch (its first, {half} before "
                f"and {half} after imgtrain float32's run, after one not counted)"
            )
            out["mixed_bfloat16"] = imgtrain_run(
                root, weights, size, frozen, tuned, "mixed_bfloat16", tmp / "bf16", log
            )
        guide = out["guide"]
        for side in ("guide", "float32", "mixed_bfloat16"):
            s = out[side]
            s["frozen_images_per_s"] = n / later(s["frozen_epoch_s"])
            s["tune_images_per_s"] = n / later(s["tune_epoch_s"])
            s["frozen_speedup"] = later(guide["frozen_epoch_s"]) / later(s["frozen_epoch_s"])
            s["tune_speedup"] = later(guide["tune_epoch_s"]) / later(s["tune_epoch_s"])
        for side in ("float32", "mixed_bfloat16"):  # what a user waits for in the first frozen epoch
            out[side]["first_frozen_s"] = (
                n / out["decode_images_per_s"] + out[side]["features_s"] + out[side]["frozen_epoch_s"][0]
            )
        guide["first_frozen_s"] = guide["frozen_epoch_s"][0]
        shutil.rmtree(tmp / "photos")  # room for the bigger folder
        t = time.perf_counter()
        root = make_jpeg_folder(tmp / "many", big, size=SOURCE_SIZE, seed=1)
        log(f"  {big:,} JPEGs written in {time.perf_counter() - t:.0f} s")
        with using_data_dir(tmp / "cache-big"):
            out["peak_rss"] = peak_rss_run(root, weights, size, tmp / "big-run", log)
    return out


def markdown(t: dict[str, Any]) -> list[str]:
    g, a, b = t["guide"], t["float32"], t["mixed_bfloat16"]
    rss = t["peak_rss"]
    m = t.get("machine", {})
    head = (
        f"Transfer learning (measured {t.get('date', '?')} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores): "
        f"`{t['backbone']}` (random weights), {t['images']:,} generated JPEGs "
        f"{t['source_size'][0]}×{t['source_size'][1]} → {t['size'][0]}×{t['size'][1]}, batch {t['batch_size']}, "
        f"{t['frozen_epochs']} frozen + {t['tune_epochs']} fine-tune epochs; the Keras guide's recipe against "
        f"`imgtrain train --set freeze_epochs=…` (epochs after a stage's first, median):"
    )
    return [
        "",
        head,
        "",
        "| | Keras guide (float32) | imgtrain float32 | imgtrain mixed_bfloat16 |",
        "|---|---|---|---|",
        f"| frozen stage, first epoch s (imgtrain: decode + features + epoch) | {g['first_frozen_s']:.1f} | "
        f"{a['first_frozen_s']:.1f} | {b['first_frozen_s']:.1f} |",
        f"| frozen stage, later epochs img/s | {g['frozen_images_per_s']:,.0f} | {a['frozen_images_per_s']:,.0f} "
        f"(**{a['frozen_speedup']:.0f}×**) | {b['frozen_images_per_s']:,.0f} (**{b['frozen_speedup']:.0f}×**) |",
        f"| fine-tune stage img/s | {g['tune_images_per_s']:,.1f} | {a['tune_images_per_s']:,.1f} "
        f"(**{a['tune_speedup']:.2f}×**) | {b['tune_images_per_s']:,.1f} (**{b['tune_speedup']:.2f}×**) |",
        "",
        f"First-epoch decode (cold cache, median of 3, {t['size'][0]}×{t['size'][1]}): "
        f"{t['decode_images_per_s']:,.0f} img/s. "
        f"A cold `imgtrain train` process on {rss['images']:,} images ({'streamed' if rss['streamed'] else 'in memory'}"
        f", 1 frozen + 1 fine-tune epoch): {rss['wall_s']:.0f} s, peak RSS {rss['peak_rss_mib']:,.0f} MiB.",
    ]
