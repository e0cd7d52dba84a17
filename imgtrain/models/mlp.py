"""Multi-layer perceptron of seeds 002/003 (Flatten -> Dense(128, relu) -> Dropout(0.2) -> softmax)."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from imgtrain.models.registry import register_model, stem


@register_model
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    augment: str = "none",
    width: int = 128,
    depth: int = 1,
    dropout: float = 0.2,
    activation: str = "relu",
    l1: float = 0.0,
    l2: float = 0.0,
) -> keras.Model:
    """Seeds 002/003: flatten, `depth` dense layers of `width` with dropout and L1/L2, softmax."""
    inputs, x = stem(input_shape, augment)
    x = keras.layers.Flatten()(x)
    reg = keras.regularizers.L1L2(l1, l2) if (l1 or l2) else None
    for i in range(depth):
        x = keras.layers.Dense(width, activation=activation, kernel_regularizer=reg, name=f"hidden{i + 1}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(
        x
    )  # softmax in float32 under mixed precision
    return keras.Model(inputs, outputs, name="mlp")
