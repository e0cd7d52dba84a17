"""The tutorial notes' training code as scripts, for `imgtrain bench --section process` (a cold process each).

    python -m imgtrain.bench.notes seed000 --epochs 5                  # the note as written
    python -m imgtrain.bench.notes seed000 --epochs 5 --like-imgtrain  # the same code with imgtrain's default settings

Each job is the note's own code (Keras only, nothing of imgtrain's training path): seed 000's MNIST CNN on a
shuffled tf.data pipeline of float pixels / 255 with the test set as validation data; seed 004's Fashion-MNIST
CNN+BatchNorm fed NumPy arrays with one-hot labels; seed 004's Dogs-vs-Cats CNN fed by `ImageDataGenerator` with
its augmentation. The data come from imgtrain's offline loaders only because `keras.datasets` needs the internet
here; they return the same arrays as `load_data()`. `--like-imgtrain` changes the settings, not the code: the compute
dtype that imgtrain's `precision: auto` picks for the model (Keras' mixed-precision policy, softmax kept in float32
as Keras' guide says) and imgtrain's default batch size. The last line printed is JSON: test accuracy and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


def _settings(args: argparse.Namespace, model: str, batch: int, train_images: int) -> tuple[int, str]:
    """(batch size, precision policy) of the job: the note's own, or with --like-imgtrain what `imgtrain train`
    chooses by default for the model and this training set (it holds out 10 % of it for validation)."""
    if not args.like_imgtrain:
        return batch, "float32"
    from imgtrain.core.auto import auto_batch, choose, cpu_flags
    from imgtrain.core.config import TrainConfig

    held_out = TrainConfig.model_fields["val_split"].default  # the notes' models are plain CNNs: kinds not needed
    return auto_batch(round(train_images * (1 - held_out)))[0], choose(model, cpu_flags("tensorflow"), None)[0]


def seed000_model() -> keras.Model:
    """Seed 000's MNIST CNN, as written in the note: constant Adam 1e-3, sparse labels."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            layers.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPool2D(2, 2, padding="same"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPool2D(padding="same"),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(10, activation="softmax", dtype="float32"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.001),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def seed004_model(
    input_shape: Sequence[int] = (28, 28, 1),
    classes: int = 10,
    dense: int = 64,
    drop: tuple[float, float] = (0.2, 0.5),
    optimizer: str = "adam",
) -> keras.Model:
    """Seed 004's conv-BN-pool-dropout x3, dense-BN-dropout CNN (Fashion-MNIST: dense 64, dropouts 0.2/0.5, Adam;
    Dogs-vs-Cats: 512, 0.25/0.5, RMSprop). The softmax stays float32, as Keras' mixed-precision guide says."""
    import keras
    from keras.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D

    stack = [Input(input_shape)]
    for width in (32, 64, 128):
        stack += [
            Conv2D(width, (3, 3), activation="relu"),
            BatchNormalization(),
            MaxPooling2D((2, 2)),
            Dropout(drop[0]),
        ]
    stack += [
        Flatten(),
        Dense(dense, activation="relu"),
        BatchNormalization(),
        Dropout(drop[1]),
        Dense(classes, activation="softmax", dtype="float32"),
    ]
    model = keras.Sequential(stack)
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def seed000(args: argparse.Namespace) -> dict[str, Any]:
    import keras
    import numpy as np
    import tensorflow as tf

    from imgtrain.data.builtin import load_mnist

    a = load_mnist()[0]
    train_image, train_label, test_image, test_label = a["x_train"], a["y_train"], a["x_test"], a["y_test"]
    if args.limit:
        train_image, train_label = train_image[: args.limit], train_label[: args.limit]
    batch, policy = _settings(args, "cnn_small", 100, len(train_image))
    keras.mixed_precision.set_global_policy(policy)
    X_train, X_test = (train_image / 255.0)[..., np.newaxis], (test_image / 255.0)[..., np.newaxis]
    train_dataset = (
        tf.data.Dataset.from_tensor_slices((X_train, train_label))
        .shuffle(len(X_train))
        .batch(batch, drop_remainder=True)
        .repeat()
    )
    test_dataset = tf.data.Dataset.from_tensor_slices((X_test, test_label)).batch(batch)
    model = seed000_model()
    model.fit(
        train_dataset,
        epochs=args.epochs,
        steps_per_epoch=len(X_train) // batch,
        validation_data=test_dataset,
        verbose=2,
    )
    return {
        "test_accuracy": float(model.evaluate(test_dataset, verbose=0)[1]),
        "batch_size": batch,
        "precision": policy,
    }


def seed004(args: argparse.Namespace) -> dict[str, Any]:
    import keras

    from imgtrain.data.builtin import load_fashion_mnist

    a = load_fashion_mnist()[0]
    trainImage = a["x_train"].reshape(-1, 28, 28, 1).astype("float32") / 255
    testImage = a["x_test"].reshape(-1, 28, 28, 1).astype("float32") / 255
    trainLabel, testLabel = keras.utils.to_categorical(a["y_train"], 10), keras.utils.to_categorical(a["y_test"], 10)
    if args.limit:
        trainImage, trainLabel = trainImage[: args.limit], trainLabel[: args.limit]
    batch, policy = _settings(args, "cnn_bn", 200, len(trainImage))
    keras.mixed_precision.set_global_policy(policy)
    model = seed004_model((28, 28, 1), 10, 64, (0.2, 0.5))
    model.fit(
        trainImage, trainLabel, validation_data=(testImage, testLabel), epochs=args.epochs, batch_size=batch, verbose=2
    )
    return {
        "test_accuracy": float(model.evaluate(testImage, testLabel, verbose=0)[1]),
        "batch_size": batch,
        "precision": policy,
    }


def dogs_vs_cats(args: argparse.Namespace) -> dict[str, Any]:
    """The note's generator pipeline on a folder with train/<class>/ and test/<class>/ (the bench generates one)."""
    from pathlib import Path

    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it only here

    train_images = sum(1 for p in Path(args.folder, "train").rglob("*") if p.is_file())
    batch, policy = _settings(args, "cnn_bn", 15, train_images)
    keras.mixed_precision.set_global_policy(policy)
    train_datagen = ImageDataGenerator(
        rotation_range=15,
        rescale=1.0 / 255,
        shear_range=0.1,
        zoom_range=0.2,
        horizontal_flip=True,
        width_shift_range=0.1,
        height_shift_range=0.1,
    )
    train_generator = train_datagen.flow_from_directory(
        f"{args.folder}/train", target_size=(128, 128), class_mode="categorical", batch_size=batch
    )
    test_generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        f"{args.folder}/test", target_size=(128, 128), class_mode="categorical", batch_size=batch, shuffle=False
    )
    model = seed004_model((128, 128, 3), 2, 512, (0.25, 0.5), optimizer="rmsprop")
    model.fit(train_generator, epochs=args.epochs, validation_data=test_generator, verbose=2)
    return {
        "test_accuracy": float(model.evaluate(test_generator, verbose=0)[1]),
        "batch_size": batch,
        "precision": policy,
    }


JOBS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "seed000": seed000,
    "seed004": seed004,
    "dogs_vs_cats": dogs_vs_cats,
}


def main(argv: Sequence[str] | None = None) -> None:
    t = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m imgtrain.bench.notes", description=__doc__.splitlines()[0])
    p.add_argument("job", choices=list(JOBS))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick runs)")
    p.add_argument("--folder", default=None, help="dogs_vs_cats: the folder with train/ and test/")
    p.add_argument("--like-imgtrain", action="store_true", help="imgtrain's default precision and batch size")
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    out = JOBS[args.job](args)
    print(json.dumps({**out, "job": args.job, "seconds": time.perf_counter() - t}))


if __name__ == "__main__":
    main()
