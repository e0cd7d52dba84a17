"""Evaluation that returns plain dicts: loss, accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.core.config import TTA
from imgtrain.core.errors import ConfigError, ImgtrainError
from imgtrain.data.dataset import Split

if TYPE_CHECKING:
    from pathlib import Path

    import keras

# test-time augmentation: "flip" averages the outputs for each image and its left-right mirror image (fastai's
# `tta` does the like). Fashion-MNIST, resnet9 (32/64/128) trained with flips: 0.9429 -> 0.9463 test accuracy.

PREDICTIONS = "predictions-test.npz"  # probabilities of the best model on the test set, written by train


def check_tta(tta: str) -> str:
    if tta not in TTA:
        raise ConfigError(f"unknown tta {tta!r}; valid: {', '.join(TTA)}")
    return tta


def trained_with_flips(model: keras.Model) -> bool:
    """Whether the model holds a horizontal RandomFlip (its training augmentation), nested models included."""
    import keras

    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.RandomFlip) and "horizontal" in str(layer.mode):
            return True
        stack += getattr(layer, "layers", [])
    return False


def tta_for(model: keras.Model, tta: str, force: bool = False) -> keras.Model:
    """`with_tta` for prediction, refused in one line for a model that never saw mirrored images in training
    (flip TTA would average in a view it was not trained on) unless `force`."""
    if check_tta(tta) == "flip" and not force and not trained_with_flips(model):
        raise ConfigError(
            "tta flip: this model was not trained with horizontal flips (no RandomFlip layer), so it never saw "
            "mirrored images; --force-tta uses it anyway"
        )
    return with_tta(model, tta)


def with_tta(model: keras.Model, tta: str = "none") -> keras.Model:
    """`model`, or a model that averages its outputs over the `tta` views of each input (in memory only: the
    wrapper is not meant to be saved; save and export the model itself)."""
    if check_tta(tta) == "none":
        return model
    import keras

    inputs = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype)
    mirrored = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="mirror")(inputs)  # (n, h, w, c): w
    outputs = keras.layers.Average(name="tta_mean")([model(inputs), model(mirrored)])
    return keras.Model(inputs, outputs, name=f"{model.name}_tta_{tta}")


def checked_pixels(images: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    """`images` if they are raw pixels (0-255) at the model's input `shape` (h, w, c); else a one-line error. Floats in
    [0, 1] are the habit of notebooks that divide by 255: the model would rescale them again and see black images."""
    want = f"(n, {', '.join('any' if d is None else str(d) for d in shape)})"
    if images.ndim != 1 + len(shape) or any(d not in (None, got) for d, got in zip(shape, images.shape[1:])):
        raise ImgtrainError(f"images have shape {tuple(images.shape)}; this model takes {want}, raw pixels 0-255")
    if images.dtype.kind not in "uif":
        raise ImgtrainError(f"images have dtype {images.dtype}; pixels are numbers 0-255 (uint8 or float)")
    if images.size and images.dtype.kind == "f":
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise ImgtrainError(f"pixels range over [{low:g}, {high:g}]; this model takes raw pixels 0-255")
        if high <= 1 and not np.array_equal(images, np.round(images)):
            raise ImgtrainError(
                f"pixels range over [{low:g}, {high:g}], as if divided by 255; this model takes raw pixels 0-255 "
                "and rescales them itself: pass images * 255 (or the uint8 images)"
            )
    return images


def predict_arrays(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs for an in-memory array, one `predict_on_batch` per chunk. Keras' `predict` feeds the
    same chunks through a tf.data pipeline whose thread competes with the model's: on the 2-core EPYC, seed 000's
    CNN in bfloat16, batch 1024, 10,000 images, `predict` swung between 15,000 and 27,000 img/s from one call to
    the next, while this stayed at 27,600-30,800."""
    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(
        [np.asarray(model.predict_on_batch(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )


def predict_probs(
    model: keras.Model,
    split: Split,
    batch_size: int = 512,
    skipped: dict[str, str] | None = None,
    tta: str = "none",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (n, classes), labels (n,), positions in the split (n,)). Streamed splits drop files that
    fail to decode (recorded in `skipped`), so `positions` says which image each row belongs to. `tta`: see
    `with_tta`."""
    model = with_tta(model, tta)
    if split.in_memory:
        # in_memory: split.x is set
        return predict_arrays(model, cast(np.ndarray, split.x), batch_size), split.y, np.arange(len(split))
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from imgtrain.data.stream import ImageBatches

    # One batch at a time with the positions it decoded, never Keras' `predict` over ImageBatches: a batch of only
    # bad files there borrows a good one from later (a training need), which would add rows no position owns.
    # Two batches decode ahead in threads (Pillow drops the GIL) while the model runs.
    batches = ImageBatches(split, model.input_shape[1:], batch_size, labels=False, skipped=skipped)
    rows: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    with ThreadPoolExecutor(2) as pool:
        ahead = deque(pool.submit(batches.decode_batch, b) for b in range(min(2, len(batches))))
        for b in range(len(batches)):
            x, keep = ahead.popleft().result()
            if b + 2 < len(batches):
                ahead.append(pool.submit(batches.decode_batch, b + 2))
            if x is not None:
                rows.append(np.asarray(model.predict_on_batch(x)))
                positions.append(keep)
    if not rows:
        return np.zeros((0, *model.output_shape[1:]), np.float32), split.y[:0], np.zeros(0, np.int64)
    keep = np.concatenate(positions)
    return np.concatenate(rows), split.y[keep], keep


def metrics_from_probs(probs: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

    k = len(class_names)
    labels = list(range(k))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "loss": float(log_loss(y, np.clip(probs, 1e-7, 1.0), labels=labels)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),  # rows: true class, columns: predicted
        "class_names": list(class_names),
    }


def evaluate(
    model: keras.Model, split: Split, class_names: list[str], batch_size: int = 512, tta: str = "none"
) -> dict[str, Any]:
    if split.in_memory:  # a user's arrays: a wrong shape or x / 255 is one line, not Keras' message or silence
        checked_pixels(cast(np.ndarray, split.x), tuple(model.input_shape[1:]))
    probs, y, _ = predict_probs(model, split, batch_size, tta=tta)
    return {**metrics_from_probs(probs, y, class_names), "tta": tta}


def score_test(
    model: keras.Model,
    split: Split,
    class_names: list[str],
    run_dir: str | Path,
    batch_size: int,
    skipped: dict[str, str],
    tta: str = "none",
) -> dict[str, Any]:
    """A run's test metrics (the test set scored once, by the best model), with the probabilities saved as
    RUN_DIR/predictions-test.npz for the report, which reuses them instead of predicting again."""
    import io
    from pathlib import Path

    from imgtrain.analysis.evaluate import PREDICTIONS
    from imgtrain.core.saving import atomic_write

    probs, y, positions = predict_probs(model, split, batch_size=batch_size, skipped=skipped, tta=tta)
    buf = io.BytesIO()
    np.savez(buf, probs=probs, y=y, positions=positions)
    atomic_write(Path(run_dir) / PREDICTIONS, buf.getvalue())
    result = metrics_from_probs(probs, y, class_names)
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_macro_f1": result["macro_f1"],
        "test_images": result["n"],
        "test_tta": tta,
        "test": result,
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable summary: headline numbers, per-class table, confusion matrix."""
    names = result["class_names"]
    w = max(8, *(len(n) for n in names))
    lines = [
        f"images {result['n']}   loss {result['loss']:.4f}   accuracy {result['accuracy']:.4f}   "
        f"macro F1 {result['macro_f1']:.4f}"
        + (f"   tta {result['tta']}" if result.get("tta", "none") != "none" else ""),
        "",
        f"{'class':<{w}}  precision  recall     f1  support",
    ]
    for name, m in result["per_class"].items():
        lines.append(f"{name:<{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted, in class order)"]
    cw = max(4, len(str(max(max(r) for r in result["confusion"]))) + 1)
    lines.append(" " * w + "".join(f"{i:>{cw}}" for i in range(len(names))))
    for name, row in zip(names, result["confusion"]):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)
