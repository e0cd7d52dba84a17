"""What every bench section shares: imgtrain's settings for the notes' models, FLOP counts, timers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import numpy as np

# imgtrain's settings for the seed models (side B); the learning rate is scaled with the batch
FAST: dict[str, Any] = dict(precision="mixed_bfloat16", batch_size=256, schedule="onecycle", learning_rate=3e-3, seed=0)


def matmul_flops(n: int = 4096, dtype: str = "float32", repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n matmul: the ceiling that a CNN's convolutions can approach."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    tf.linalg.matmul(a, a).numpy()  # warm-up: oneDNN picks its kernel here
    best = min(_timed(lambda: tf.linalg.matmul(a, a).numpy()) for _ in range(repeats))
    return 2 * n**3 / best


def forward_flops(model: keras.Model) -> float:
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


def step_rate(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int = 40) -> float:
    """Images/s of the model's compiled train step alone: one batch, converted to tensors once, fed `steps` times
    after a warm-up step. No input pipeline, callbacks or epoch bookkeeping: the most any training loop could
    reach with this model, batch size and precision here. It trains the model further (call it last)."""
    import keras

    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    model.train_on_batch(x, y)
    seconds = _timed(lambda: [model.train_on_batch(x, y) for _ in range(steps)])
    return steps * len(x) / seconds


def inference_pair(
    seed_model: keras.Model, seed_x: np.ndarray, model: keras.Model, x: np.ndarray, repeats: int = 3
) -> dict[str, float]:
    """Images/s of `model.predict` as the notes call it (batch 32) against imgtrain's `predict_arrays` (batch
    1024, bfloat16), best of `repeats` after a warm-up call."""
    from imgtrain.analysis.evaluate import predict_arrays

    def best_rate(fn: Callable[[], object]) -> float:
        fn()
        return len(x) / min(_timed(fn) for _ in range(repeats))

    return {
        "seed_images_per_s": best_rate(lambda: seed_model.predict(seed_x, verbose=0)),
        "imgtrain_images_per_s": best_rate(lambda: predict_arrays(model, x, 1024)),
    }


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
