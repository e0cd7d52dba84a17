"""Models by name: `build_model("cnn_bn", input_shape=(28, 28, 1), num_classes=10)` returns a plain keras.Model.

Every model takes uint8-range pixels (0–255, any float or int dtype) of shape `input_shape` and rescales them
itself, so a saved model needs no preprocessing code beside it: decode, resize, feed.
"""
from __future__ import annotations

from typing import Callable

import keras

from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry[Callable[..., keras.Model]] = Registry("model")
HEAD = "probs"  # the name of every model's last layer, the softmax Dense: what a new start replaces and trains first
register_model = MODELS.register

AUGMENTS = {
    "none": lambda: [],
    "shift": lambda: [keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")],
    "flip": lambda: [keras.layers.RandomFlip("horizontal")],
    "flip_shift": lambda: [keras.layers.RandomFlip("horizontal"),
                           keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")],
    # seed 004's ImageDataGenerator: rotation 15°, zoom 0.2, shift 0.1, horizontal flip (shear has no layer)
    "seed004": lambda: [keras.layers.RandomRotation(15 / 360), keras.layers.RandomZoom(0.2),
                        keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomFlip("horizontal")],
}


def stem(input_shape, augment: str = "none"):
    """(inputs, x): the Input, the 1/255 rescale, then augmentation layers that act only in training."""
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    for layer in AUGMENTS[augment]():
        x = layer(x)
    return inputs, x


def build_model(name: str, input_shape=(28, 28, 1), num_classes: int = 10, augment: str = "none",
                **options) -> keras.Model:
    builder = MODELS.get(name)
    try:
        return builder(tuple(input_shape), num_classes, augment=augment, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            import inspect

            known = [p for p in inspect.signature(builder).parameters
                     if p not in ("input_shape", "num_classes", "augment")]
            bad = str(err).split("'")[1] if "'" in str(err) else str(err)
            raise ConfigError(f"model {name!r} has no option {bad!r}; options: {', '.join(known)}") from None
        raise
    except ConfigError:
        raise
    except ValueError as err:  # e.g. an input too small for the model's pooling
        raise ConfigError(f"model {name!r} cannot be built for input {tuple(input_shape)}: "
                          f"{str(err).splitlines()[0]}") from None


from . import backbones, cnn, cost, mlp, resnet  # noqa: E402,F401  (registers the models; cost counts FLOPs)

__all__ = ["HEAD", "MODELS", "build_model", "register_model", "stem"]
