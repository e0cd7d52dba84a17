"""`imgtrain bench`'s folder section (seed 004's Dogs-vs-Cats path): decoding a folder of JPEGs, the decode cache,
batches in memory, the augmentation layers, and training seed 004's Dogs-vs-Cats CNN, seed code against imgtrain.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.bench.common import _timed, forward_flops
from imgtrain.bench.notes import seed004_model

if TYPE_CHECKING:
    from imgtrain.data.dataset import Dataset


def make_jpeg_folder(
    root: Path, n: int, size: tuple[int, int] = (320, 240), seed: int = 0, signal: bool = False
) -> Path:
    """n photo-like JPEGs (smooth colour fields with shapes and grain), half in cats/, half in dogs/. With `signal`
    the class shows in the shapes' colour, which flips, shifts and rotations leave alone: reddish for cats, bluish
    for dogs (otherwise any colour, and no model can tell the classes apart)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = rng.integers(0, size[0] - 40), rng.integers(0, size[1] - 40)
            colour = rng.integers(0, 256, 3)
            if signal:  # a strong channel and two weak ones: red for cats, blue for dogs
                colour = np.array([rng.integers(170, 256), rng.integers(0, 90), rng.integers(0, 90)])
                colour = colour if folder.name == "cats" else colour[::-1]
            box: list[Any] = [x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 100)]  # NumPy ints
            draw.ellipse(box, fill=tuple(int(v) for v in colour))
        grain = rng.normal(0, 6, (size[1], size[0], 3))
        im = Image.fromarray(np.clip(np.asarray(im) + grain, 0, 255).astype(np.uint8))
        im.save(folder / f"{i}.jpg", quality=90)
    return root


@contextmanager
def using_data_dir(path: Path) -> Iterator[None]:
    """IMGTRAIN_DATA pointed at `path` (a cold decode and feature cache), restored after."""
    old = os.environ.get("IMGTRAIN_DATA")
    os.environ["IMGTRAIN_DATA"] = str(path)
    try:
        yield
    finally:
        os.environ.pop("IMGTRAIN_DATA") if old is None else os.environ.__setitem__("IMGTRAIN_DATA", old)


def folder_pipeline(n: int, train_images: int, log: Callable[[str], object]) -> dict[str, Any]:
    """Input pipeline img/s on n generated 320x240 JPEGs resized to 128x128 with seed 004's augmentation, and
    training img/s of seed 004's Dogs-vs-Cats CNN on 128x128x3 (seed code against imgtrain)."""
    import keras
    import tensorflow as tf

    from imgtrain.data import load_dataset
    from imgtrain.data.batches import ArrayBatches
    from imgtrain.data.cache import wait_for_writes
    from imgtrain.models import AUGMENTS

    out: dict[str, Any] = {"images": n, "source_size": [320, 240], "size": [128, 128]}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp) / "pets", n)
        from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it only here

        gen = ImageDataGenerator(
            rotation_range=15,
            rescale=1.0 / 255,
            shear_range=0.1,
            zoom_range=0.2,
            horizontal_flip=True,
            width_shift_range=0.1,
            height_shift_range=0.1,
        )
        flow = gen.flow_from_directory(str(root), target_size=(128, 128), batch_size=15, class_mode="categorical")
        out["seed_imagedatagenerator_images_per_s"] = n / _timed(lambda: [flow[i] for i in range(len(flow))])
        log(f"  folder: seed ImageDataGenerator {out['seed_imagedatagenerator_images_per_s']:,.0f} img/s")

        loaded: list[Dataset] = []

        def load() -> None:
            loaded.append(
                load_dataset(
                    f"folder:{root}", image_size=(128, 128), channels=3, val_split=0.0, test_split=0.0, stream=False
                )
            )

        with using_data_dir(Path(tmp) / "cache"):  # a cold decode cache
            out["imgtrain_first_epoch_images_per_s"] = n / _timed(load)  # decodes every file (the cache is
            wait_for_writes()  # written in the background meanwhile)
            out["imgtrain_cached_load_images_per_s"] = n / _timed(load)  # what the next run reads
        ds = loaded[-1]
        batches = ArrayBatches(cast(np.ndarray, ds.train.x), ds.train.y, 64, seed=0)  # stream=False: in memory
        # a later epoch's input: the uint8 batch from memory, then seed 004's augmentation as the train step runs it
        seed004_layers: Callable[[], list[Any]] = AUGMENTS["seed004"]
        augment = keras.Sequential(seed004_layers())
        step = tf.function(lambda xb: augment(tf.cast(xb, tf.float32), training=True))
        step(batches[0][0])  # trace once
        full = range(len(batches) - 1)  # full batches only: the last, shorter one would trace again
        out["imgtrain_later_epoch_images_per_s"] = (
            64 * len(full) / _timed(lambda: [step(batches[i][0]).numpy() for i in full])
        )
        log(
            f"  folder: imgtrain decode {out['imgtrain_first_epoch_images_per_s']:,.0f} img/s, cache "
            f"{out['imgtrain_cached_load_images_per_s']:,.0f} img/s, later epochs with augmentation "
            f"{out['imgtrain_later_epoch_images_per_s']:,.0f} img/s"
        )
    return {**out, **dogs_vs_cats_training(train_images, log)}


def dogs_vs_cats_training(train_images: int, log: Callable[[str], object]) -> dict[str, Any]:
    """Training img/s of seed 004's Dogs-vs-Cats CNN on 128x128x3, the note's code against imgtrain's model."""
    import keras

    from imgtrain.core.backend import precision
    from imgtrain.data.batches import ArrayBatches
    from imgtrain.training.batchnorm import fused_batchnorm
    from imgtrain.training.callbacks import EpochStats

    out: dict[str, Any] = {}
    # training throughput of the Dogs-vs-Cats CNN (0.9 GFLOP per training image): arrays in memory, batch 64 on both
    # sides (the note trains with 15), epochs after the first
    x = np.random.default_rng(0).integers(0, 256, (train_images, 128, 128, 3), dtype=np.uint8)
    y = np.arange(train_images) % 2
    seed_model = seed004_model((128, 128, 3), 2, dense=512, drop=(0.25, 0.5))
    xa, ya = x.astype("float32") / 255, keras.utils.to_categorical(y, 2)
    from imgtrain.models import build_model

    with precision("mixed_bfloat16"):
        model = build_model("cnn_bn", (128, 128, 3), 2, dense=512, conv_dropout=0.25, dropout=0.5)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    seconds_a: list[float] = []
    seconds_b: list[float] = []
    for epoch in range(3):
        seconds_a += seed_model.fit(
            xa, ya, batch_size=64, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=[EpochStats()]
        ).history["epoch_seconds"]
        with fused_batchnorm("tensorflow"):
            seconds_b += model.fit(
                ArrayBatches(x, y, 64, seed=0, epoch=epoch),
                epochs=epoch + 1,
                initial_epoch=epoch,
                shuffle=False,
                verbose=0,
                callbacks=[EpochStats()],
            ).history["epoch_seconds"]
    out["train_mflop_per_image"] = 3 * forward_flops(seed_model) / 1e6
    out["seed_train_images_per_s"] = train_images / statistics.median(seconds_a[1:])
    out["imgtrain_train_images_per_s"] = train_images / statistics.median(seconds_b[1:])
    log(
        f"  dogs-vs-cats CNN 128x128: seed {out['seed_train_images_per_s']:,.0f} img/s, imgtrain "
        f"{out['imgtrain_train_images_per_s']:,.0f} img/s"
    )
    return out


def markdown(f: dict[str, Any]) -> list[str]:
    return [
        "",
        f"Folder pipeline, {f['images']} JPEGs 320×240 → 128×128, seed 004's augmentation:",
        "",
        "| path | img/s |",
        "|---|---|",
        f"| seed `ImageDataGenerator` (one epoch) | {f['seed_imagedatagenerator_images_per_s']:,.0f} |",
        f"| imgtrain first epoch (decode at reduced size, threads) | {f['imgtrain_first_epoch_images_per_s']:,.0f} |",
        f"| imgtrain next run (uint8 cache by path, size, mtime) | {f['imgtrain_cached_load_images_per_s']:,.0f} |",
        f"| imgtrain later epochs (uint8 batches in memory + seed 004's augmentation layers on each batch) | "
        f"{f['imgtrain_later_epoch_images_per_s']:,.0f} |",
        f"| training, Dogs-vs-Cats CNN ({f['train_mflop_per_image']:.0f} MFLOP/img), batch 64 both: seed float32 → "
        f"imgtrain bfloat16 | {f['seed_train_images_per_s']:,.0f} → {f['imgtrain_train_images_per_s']:,.0f} |",
    ]
