"""What Keras' `fit` is given: batches in a (seed, epoch) order, the compiled loss and metric, class weights, the
progress mode."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from imgtrain.core.config import TrainConfig
from imgtrain.core.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from imgtrain.data.batches import ArrayBatches
    from imgtrain.data.dataset import Dataset, Split
    from imgtrain.data.stream import ImageBatches


def class_weights(spec: Literal["none", "balanced"] | dict[str, float], ds: Dataset) -> dict[int, float] | None:
    if spec == "none":
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(ds.train.y)
        weights = compute_class_weight("balanced", classes=present, y=ds.train.y)
        return {int(c): float(w) for c, w in zip(present, weights)}
    out: dict[int, float] = {}
    for key, w in spec.items():
        idx = ds.class_names.index(key) if key in ds.class_names else int(key) if str(key).isdigit() else None
        if idx is None or idx >= ds.num_classes:
            raise ConfigError(f"class_weight key {key!r} is not a class; classes: {', '.join(ds.class_names)}")
        out[idx] = float(w)
    return {i: out.get(i, 1.0) for i in range(ds.num_classes)}


def fit_inputs(
    split: Split,
    cfg: TrainConfig,
    input_shape: Sequence[int],
    onehot: int,
    shuffle: bool,
    skipped: dict[str, str],
    epoch: int = 0,
    sharding: dict[str, Any] | None = None,
) -> ArrayBatches | ImageBatches | tuple[np.ndarray, np.ndarray]:
    """Training batches in an order fixed by (seed, epoch), or the (x, y) arrays of a validation split.
    `sharding` (a data-parallel run, Cluster.sharding): this process's part of every batch, validation included."""
    batch_size = cast(int, cfg.batch_size)  # resolved by now: no `auto`
    if split.in_memory:
        from imgtrain.data.batches import ArrayBatches

        x = cast(np.ndarray, split.x)  # in memory: x is set
        y = np.eye(onehot, dtype=np.float32)[split.y] if onehot else split.y
        if shuffle or sharding:
            return ArrayBatches(x, y, batch_size, cfg.seed, epoch, shuffle=shuffle, **(sharding or {}))
        return x, y
    from imgtrain.data.stream import ImageBatches  # makes its one-hot rows per batch

    # a data-parallel run decodes in fit's own thread: Keras' threaded prefetch made a killed and resumed run drift
    # from the uninterrupted one at the epoch after the kill (docs/distributed.md)
    return ImageBatches(
        split,
        input_shape,
        batch_size,
        shuffle=shuffle,
        seed=cfg.seed,
        onehot=onehot,
        skipped=skipped,
        epoch=epoch,
        workers=1 if sharding else 2,
        **(sharding or {}),
    )


def onehot_width(cfg: TrainConfig, num_classes: int) -> int:
    """Width of one-hot targets, or 0 for integer labels (label smoothing needs one-hot)."""
    return num_classes if (cfg.label_mode == "onehot" or cfg.label_smoothing > 0) else 0


def compile_model(model: keras.Model, cfg: TrainConfig, num_classes: int, optimizer: keras.optimizers.Optimizer) -> int:
    """Compile with the config's loss, accuracy metric and XLA setting; returns the one-hot width (0: sparse)."""
    import keras

    onehot = onehot_width(cfg, num_classes)
    if onehot:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        acc = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss, acc = (
            keras.losses.SparseCategoricalCrossentropy(),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        )
    jit = cfg.jit_compile if cfg.jit_compile is not None else (False if cfg.backend == "tensorflow" else "auto")
    model.compile(optimizer=optimizer, loss=loss, metrics=[acc], jit_compile=jit)
    return onehot


def progress_mode(cfg: TrainConfig) -> int:
    """Keras' verbose for fit: auto is a bar on a terminal, one line per epoch in a log, and nothing in a notebook,
    where callbacks.run_callbacks adds the live display instead."""
    if cfg.verbose == "auto":
        from imgtrain.analysis.notebook import in_notebook

        return 0 if in_notebook() else 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "epoch": 2, "quiet": 0}[cfg.verbose]
