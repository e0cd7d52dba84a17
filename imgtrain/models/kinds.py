"""The kinds of layers a model contains, for `precision: auto` (core/auto.py decides from them, not from a name).

A kind is a Keras layer class name, plus "GroupedConv" for a convolution with groups > 1 (ConvNeXt's depthwise
convolutions are Conv2D layers with groups = channels). Read from a built model, from a saved .keras file's
config.json (no weights loaded, nothing built), or from a registered model built once as a float32 probe.
"""

from __future__ import annotations

import collections
import functools
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


def layer_kinds(model: keras.Layer) -> frozenset[str]:
    """The kinds of every layer in `model`, nested models' layers included."""
    return frozenset(_kind(type(layer).__name__, {"groups": getattr(layer, "groups", 1)}) for layer in _walk(model))


def saved_kinds(path: str | Path) -> frozenset[str] | None:
    """The kinds in a saved .keras file (None: not a .keras zip, e.g. a legacy .h5)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    return frozenset(_kind(d["class_name"], d.get("config") or {}) for d in _layer_configs(config))


@functools.lru_cache(maxsize=32)
def registered_kinds(name: str, input_shape: tuple[int, int, int], options: str) -> frozenset[str]:
    """The kinds of registered model `name` (`options`: its model_options as JSON), built once in float32 without
    weights and thrown away, outside any distribution (a probe on one host, not a model every process must hold
    alike). Keras' layer-name counters are put back, so that the run's own model gets the names it would have had
    without the probe."""
    from keras import distribution as kd
    from keras.src.backend.common import global_state  # the counters behind keras.backend.get_uid

    from imgtrain.core.backend import precision
    from imgtrain.models.registry import build_model

    counters = global_state.get_global_attribute(
        "object_name_uids", default=collections.defaultdict(int), set_to_default=True
    )
    saved, job = dict(counters), kd.distribution()
    kd.set_distribution(None)
    try:
        with precision("float32"):
            extra = {"weights": "none"} if "weights" in _signature(name) else {}
            return layer_kinds(build_model(name, input_shape, 2, **extra, **json.loads(options)))
    finally:
        kd.set_distribution(job)
        counters.clear()
        counters.update(saved)


def _signature(name: str) -> set[str]:
    import inspect

    from imgtrain.models.registry import MODELS

    return set(inspect.signature(MODELS.get(name)).parameters)


def _kind(class_name: str, config: dict[str, Any]) -> str:
    return "GroupedConv" if isinstance(config.get("groups"), int) and config["groups"] > 1 else class_name


def _walk(layer: keras.Layer) -> Iterator[keras.Layer]:
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _walk(sub)


def _layer_configs(config: Any) -> Iterator[dict[str, Any]]:
    """Every {"class_name", "config"} entry of a layer in a serialized model, nested models' included."""
    if isinstance(config, dict):
        if (
            "class_name" in config
            and isinstance(config.get("config"), dict)
            and config.get("module", "").startswith(("keras.layers", "keras.src.layers"))
        ):
            yield config
        for value in config.values():
            yield from _layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layer_configs(value)
