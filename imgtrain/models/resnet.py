"""A small residual network in the shape of David Page's ResNet-9 (the DAWNBench CIFAR-10 winner), scaled down
for CPUs: stem conv; stage 1 conv-pool + residual pair; stage 2 conv-pool; stage 3 conv-pool + residual pair.

Cost per 28x28x1 image, forward: 17.7 MFLOP at the default widths (16 | 16, 48, 96), 11.6 at (16 | 16, 32, 64);
seed 000's CNN is 9.3 MFLOP.

Widths are multiples of 16 because oneDNN's convolutions are slow for other channel counts: bfloat16 training on
Fashion-MNIST (2-core EPYC, batch 256, flips) ran 1,968 img/s at (24, 48, 96), 23.1 MFLOP, against 4,521 at
(16, 48, 96) and 2,855 at (32, 48, 96), and 3,818 with (24, 48, 96) minus stage 1's residual pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from imgtrain.models.registry import register_model
from imgtrain.models.registry import stem as input_stem


def conv_bn(x: keras.KerasTensor, width: int, name: str, pool: bool = False, l2: float = 0.0) -> keras.KerasTensor:
    """conv 3x3 (no bias: BN has one) -> [max-pool 2] -> BN -> ReLU; pooling before BN is 4x less BN work."""
    reg = keras.regularizers.L2(l2) if l2 else None
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_conv")(x)
    if pool:
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # see cnn_small: short runs
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@register_model
def resnet9(
    input_shape: Sequence[int],
    num_classes: int,
    augment: str = "none",
    widths: Sequence[int] = (16, 48, 96),
    stem: int = 16,
    residual: Sequence[bool] = (True, False, True),
    dropout: float = 0.0,
    l2: float = 0.0,
) -> keras.Model:
    """Page's ResNet-9 layout at CPU widths: a stem conv, three conv-pool stages, residual pairs, global max-pool.

    `stem` (0: none) then the stages' `widths`, a residual pair where `residual` says; dropout, softmax."""
    if len(widths) != len(residual):
        raise ValueError(f"widths {tuple(widths)} and residual {tuple(residual)} need the same length")
    inputs, x = input_stem(input_shape, augment)
    if stem:  # 0: stage 1 convolves the pixels directly
        x = conv_bn(x, stem, "stem", l2=l2)
    for i, (width, res) in enumerate(zip(widths, residual), start=1):
        x = conv_bn(x, width, f"stage{i}", pool=True, l2=l2)
        if res:
            r = conv_bn(x, width, f"stage{i}_res1", l2=l2)
            r = conv_bn(r, width, f"stage{i}_res2", l2=l2)
            x = keras.layers.Add(name=f"stage{i}_add")([x, r])
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(
        x
    )  # softmax in float32 under mixed precision
    return keras.Model(inputs, outputs, name="resnet9")
