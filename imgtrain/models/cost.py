"""What a model costs: forward FLOPs per image, counted from its layers' shapes (a multiply-add is 2 FLOPs).

Counts the convolutions and dense layers, which hold nearly all the arithmetic of these networks; pooling,
normalisation and activations are left out. Nested models (a pretrained backbone) are walked into.
"""

from __future__ import annotations

import math

import keras


def _layer_flops(layer: keras.layers.Layer) -> int:
    if not hasattr(layer, "kernel"):
        return 0
    kernel: tuple[int, ...] = tuple(layer.kernel.shape)
    out: tuple[int, ...] = tuple(layer.output.shape[1:])  # (h, w, c) or (units,): one image
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, c_in, multiplier)
        return 2 * math.prod(kernel[:2]) * math.prod(out)
    if isinstance(layer, keras.layers.Conv2D):  # kernel (kh, kw, c_in / groups, c_out)
        return 2 * math.prod(kernel[:3]) * math.prod(out)
    if isinstance(layer, keras.layers.Dense):  # kernel (in, out); applied at every position of a >1-d input
        return 2 * math.prod(kernel) * math.prod(out[:-1])
    return 0


def forward_mflops(model: keras.Model) -> float:
    """Forward MFLOPs for one image at the model's input size."""
    total, stack = 0, list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        else:
            total += _layer_flops(layer)
    return total / 1e6
