"""The model registry: `build_model("cnn_bn", ...)`; each builder module registers its models here. Models by name:
`build_model("cnn_bn", input_shape=(28, 28, 1), num_classes=10)` returns a plain keras.Model.

Every model takes uint8-range pixels (0–255, any float or int dtype) of shape `input_shape` and rescales them
itself, so a saved model needs no preprocessing code beside it: decode, resize, feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import keras

from imgtrain.core.errors import ConfigError
from imgtrain.core.registry import Registry

MODELS: Registry[Callable[..., keras.Model]] = Registry("model")
HEAD = "probs"  # the name of every model's last layer, the softmax Dense: what a new start replaces and trains first
register_model = MODELS.register

AUGMENTS: dict[str, Callable[[], list[keras.layers.Layer]]] = {
    "none": lambda: [],
    "shift": lambda: [keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")],
    "flip": lambda: [keras.layers.RandomFlip("horizontal")],
    "flip_shift": lambda: [
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant"),
    ],
    # seed 004's ImageDataGenerator: rotation 15°, zoom 0.2, shift 0.1, horizontal flip (shear has no layer)
    "seed004": lambda: [
        keras.layers.RandomRotation(15 / 360),
        keras.layers.RandomZoom(0.2),
        keras.layers.RandomTranslation(0.1, 0.1),
        keras.layers.RandomFlip("horizontal"),
    ],
}


def stem(input_shape: Sequence[int], augment: str = "none") -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(inputs, x): the Input, the 1/255 rescale, then augmentation layers that act only in training."""
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    for layer in AUGMENTS[augment]():
        x = layer(x)
    return inputs, x


def build_model(
    name: str, input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, augment: str = "none", **options: Any
) -> keras.Model:
    builder = MODELS.get(name)
    try:
        return builder(tuple(input_shape), num_classes, augment=augment, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            import inspect

            known = [
                p for p in inspect.signature(builder).parameters if p not in ("input_shape", "num_classes", "augment")
            ]
            bad = str(err).split("'")[1] if "'" in str(err) else str(err)
            raise ConfigError(f"model {name!r} has no option {bad!r}; options: {', '.join(known)}") from err
        raise
    except ConfigError:
        raise
    except ValueError as err:  # e.g. an input too small for the model's pooling
        raise ConfigError(
            f"model {name!r} cannot be built for input {tuple(input_shape)}: {str(err).splitlines()[0]}"
        ) from err
