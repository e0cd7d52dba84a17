"""Pretrained backbones from `keras.applications` with a new head: the starting point of transfer learning.

    build_model("efficientnet_b0", (224, 224, 3), num_classes=2, weights="imagenet")

Each model takes raw 0-255 pixels like every imgtrain model: a grayscale input is repeated into three channels
and the backbone's own preprocessing is a layer inside the saved model (Keras' `include_preprocessing`, or a
Rescaling layer for ResNet50V2), so `predict`, `serve` and `export` feed it as they feed the others. The backbone
is one layer named "backbone" (a Functional model); the head is global average pooling, dropout and a softmax
Dense named "probs".

`weights`: "imagenet" (Keras' own download and cache, ~/.keras/models/), "none" (random), or the path of a weights
file for the backbone alone (Keras' `.h5` or `.weights.h5`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras

from imgtrain.core.errors import ConfigError
from imgtrain.models.registry import AUGMENTS, register_model


@dataclass(frozen=True)
class Backbone:
    constructor: str  # the keras.applications function
    imagenet_file: str  # the file Keras downloads for weights="imagenet", include_top=False
    preprocessing: str  # "builtin": the constructor's include_preprocessing (or always in the model); "tf": [-1, 1]
    default_size: int = 224  # the input size its ImageNet weights were trained at (pixels, square)


BACKBONES = {
    "mobilenet_v3_small": Backbone(
        "MobileNetV3Small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "builtin"
    ),
    "mobilenet_v3_large": Backbone(
        "MobileNetV3Large", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "builtin"
    ),
    "efficientnet_b0": Backbone("EfficientNetB0", "efficientnetb0_notop.h5", "builtin"),
    "efficientnet_v2_b0": Backbone("EfficientNetV2B0", "efficientnetv2-b0_notop.h5", "builtin"),
    "resnet50_v2": Backbone("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "tf"),
    "convnext_tiny": Backbone("ConvNeXtTiny", "convnext_tiny_notop.h5", "builtin"),
}


MakeBackbone = Callable[[str | None], keras.Model]  # weights ("imagenet", a file's path, None) -> the backbone


def keras_cache_dir() -> Path:
    """Where Keras' get_file keeps downloaded weights ($KERAS_HOME/models, else ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _imagenet_backbone(name: str, spec: Backbone, make: MakeBackbone) -> keras.Model:
    """The backbone with ImageNet weights from Keras' cache or download; offline, one line naming the file."""
    cached = keras_cache_dir() / spec.imagenet_file
    hint = (
        f"put Keras' file {spec.imagenet_file} in {cached.parent}/ (where Keras keeps its downloads), or pass "
        f"weights: PATH to a weights file for {name}, or weights: none to start from random weights"
    )
    if not cached.is_file() and os.environ.get("IMGTRAIN_OFFLINE") == "1":
        raise ConfigError(f"ImageNet weights for {name} are not in Keras' cache and IMGTRAIN_OFFLINE=1; {hint}")
    try:
        return make("imagenet")
    except Exception as err:  # Keras raises a bare Exception for a failed download
        if "fetch failure" not in str(err) and "URL" not in str(err):
            raise
        why = (
            "the cached file does not match Keras' checksum and a new download failed"
            if cached.is_file()
            else "no network?"
        )
        raise ConfigError(f"cannot download ImageNet weights for {name} ({why}); {hint}") from err


def _weights_file_backbone(name: str, path: str, make: MakeBackbone) -> keras.Model:
    """The backbone with weights read from `path`; a file that does not fit names the first layer that disagrees."""
    if not Path(path).is_file():
        raise ConfigError(f"weights file {path!r} not found; valid weights: imagenet, none, or a path to a file")
    base = make(None)
    try:
        where = first_mismatch(base, path)  # Keras 3 only warns for some mismatches and loads what it can
        if where is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base.load_weights(path)
    except Exception as err:  # Keras raises ValueError, KeyError or h5py errors for a file it cannot read
        where = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    if where is not None:
        raise ConfigError(f"weights file {path} does not fit {name}: {where}")
    return base


def _snake(name: str) -> str:
    """CamelCase -> snake_case as Keras names the entries of a `.weights.h5` file ("BatchNormalization" ->
    "batch_normalization")."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _stored_shapes(model: keras.Model, path: str) -> list[list[tuple[int, ...]] | None]:
    """The weight shapes a Keras weights file holds for each layer of `model` that has weights (None: nothing).
    Legacy HDF5 files (the ImageNet downloads) are matched by order, as Keras loads them; Keras 3 `.weights.h5`
    files by the entry Keras names after each layer's class and its count (`conv2d_3`)."""
    import h5py

    out: list[list[tuple[int, ...]] | None]
    seen: dict[str, int]
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            out = []
            for raw in root.attrs["layer_names"]:
                group = root[raw.decode() if isinstance(raw, bytes) else raw]
                shapes = [
                    tuple(group[w.decode() if isinstance(w, bytes) else w].shape) for w in group.attrs["weight_names"]
                ]
                if shapes:
                    out.append(shapes)
            return out
        entries, seen, out = f.get("layers", {}), {}, []
        for layer in model.layers:
            base = _snake(type(layer).__name__)
            key = base if not seen.get(base) else f"{base}_{seen[base]}"
            seen[base] = seen.get(base, 0) + 1
            if layer.weights:
                v = entries[key]["vars"] if key in entries and "vars" in entries[key] else None
                out.append(None if v is None else [tuple(v[str(i)].shape) for i in range(len(v))])
        return out


def first_mismatch(model: keras.Model, path: str) -> str | None:
    """'the first layer that disagrees is ...' between `model` and a weights file; None when every layer with
    weights finds the same shapes in the file and the file holds no more."""
    layers = [layer for layer in model.layers if layer.weights]
    stored = _stored_shapes(model, path)
    for i, layer in enumerate(layers):
        want = [tuple(w.shape) for w in layer.weights]
        got = stored[i] if i < len(stored) else None
        if got != want:
            held = "nothing" if got is None else got
            return (
                f"the first layer that disagrees is {layer.name!r} ({type(layer).__name__}): the file holds "
                f"{held}, the model needs {want}"
            )
    if len(stored) > len(layers):
        return f"the file holds weights for {len(stored)} layers, the model has {len(layers)}"
    return None


def backbone_layer(name: str, input_shape: Sequence[int], weights: str = "imagenet") -> keras.Model:
    """The bare pretrained network (include_top=False) named "backbone", for an RGB input of `input_shape`."""
    spec = BACKBONES[name]
    ctor = getattr(keras.applications, spec.constructor)
    extra = {"include_preprocessing": True} if "include_preprocessing" in ctor.__code__.co_varnames else {}

    def make(w: str | None) -> keras.Model:
        return ctor(include_top=False, weights=w, input_shape=(*input_shape[:2], 3), **extra)

    if weights == "imagenet":
        base = _imagenet_backbone(name, spec, make)
    elif weights in ("none", None):
        base = make(None)
    else:
        base = _weights_file_backbone(name, str(weights), make)
    base.name = "backbone"
    return base


def transfer_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    augment: str = "none",
    *,
    weights: str = "imagenet",
    dropout: float = 0.2,
) -> keras.Model:
    """raw pixels -> [gray to RGB] -> augmentation -> [backbone preprocessing] -> backbone -> pooling, dropout,
    softmax. Augmentation acts on 0-255 pixels before the backbone's own scaling, and only in training."""
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if input_shape[-1] == 1:  # ImageNet backbones see three channels: a gray image is the same value in each
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    for layer in AUGMENTS[augment]():
        x = layer(x)
    if BACKBONES[name].preprocessing == "tf":  # ResNet50V2's preprocess_input: pixels to [-1, 1]
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    backbone = backbone_layer(name, input_shape, weights)
    # pretrained: BatchNormalization keeps the statistics it learned on ImageNet, in every stage (Keras' transfer
    # learning guide calls the base model with training=False); from scratch it learns them as usual
    x = backbone(x, training=False) if weights not in ("none", None) else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(
        x
    )  # softmax in float32 under mixed precision
    return keras.Model(inputs, outputs, name=name)


def _register(name: str, spec: Backbone) -> None:
    def build(
        input_shape: Sequence[int],
        num_classes: int,
        augment: str = "none",
        weights: str = "imagenet",
        dropout: float = 0.2,
    ) -> keras.Model:
        return transfer_model(name, input_shape, num_classes, augment, weights=weights, dropout=dropout)

    build.__name__ = name
    build.__doc__ = (
        f"{spec.constructor} (keras.applications; weights imagenet, none or a file), new head: "
        "pooling, dropout, softmax."
    )
    build.default_size = spec.default_size  # type: ignore[attr-defined]  # read back with getattr (cli catalog)
    register_model(build)


for _name, _spec in BACKBONES.items():
    _register(_name, _spec)
