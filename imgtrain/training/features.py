"""The frozen stage on cached features: while nothing before the head trains and nothing random changes its input,
the body's output for each image is the same in every epoch, so it is computed once (and kept on disk, keyed by
the body's weights and the images' bytes) and the head trains on it. The head's layers are shared with the whole
model, so what the head learns is in the model that is saved, exported and served.

Used by stages.fit_stages when `cache_features` is on (the default), in memory or streamed: a streamed folder is
decoded once for its features, and its features (a few KB an image) are what the head trains on, so the frozen
stage of a 10,000-photo folder neither decodes it each epoch nor holds its pixels. Augmentation, or dropout inside
the body, trains through the frozen body instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import keras
import numpy as np

from imgtrain.models import HEAD

if TYPE_CHECKING:
    from imgtrain.data.dataset import Split


def head_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers that make the head: the softmax layer `probs` and the dropout layers right before it (random,
    so they stay out of the cached part)."""
    chain = [model.get_layer(HEAD)]
    while True:
        before = chain[0].input._keras_history.operation
        if not isinstance(before, keras.layers.Dropout):
            return chain
        chain.insert(0, before)


def cacheable(model: keras.Model) -> bool:
    """Whether the part before the head computes the same output for an image in every training step: no layer of
    it draws random numbers in training (augmentation, dropout). A pretrained backbone is called with
    training=False, so the dropout inside it never acts."""
    extractor = keras.Model(model.inputs, head_chain(model)[0].input)
    return not any(_draws_random(layer) for layer in extractor.layers if layer.name != "backbone")


def _draws_random(layer: keras.layers.Layer) -> bool:
    from imgtrain.training.callbacks import seed_generators

    if isinstance(layer, keras.layers.Dropout) and layer.rate == 0:
        return False
    return bool(seed_generators(layer))


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor: images -> the head's input, head: that input -> probabilities), the head sharing its layers
    with `model`."""
    chain = head_chain(model)
    features = chain[0].input
    extractor = keras.Model(model.inputs, features, name="features")
    inputs = keras.Input(tuple(features.shape[1:]), name="features_in")
    x = inputs
    for layer in chain:
        x = layer(x)
    return extractor, keras.Model(inputs, x, name="head")


def _key(extractor: keras.Model, images: np.ndarray | list[str], shape: Sequence[int]) -> str:
    """sha256 over the extractor's architecture and weights and the images: their bytes (in memory) or every
    file's (path, size, mtime) and the decoded shape (streamed, as the decode cache keys them). A changed backbone,
    other weights or other images (or another size, or order) give another key."""
    from imgtrain.core.hashing import array_bytes
    from imgtrain.core.saving import weights_hash
    from imgtrain.data.files import listing_hash

    h = hashlib.sha256(extractor.to_json().encode())
    h.update(weights_hash(extractor).encode())
    h.update(str(tuple(shape)).encode())
    if isinstance(images, np.ndarray):
        # a flat uint8 array: a buffer, which numpy's stubs declare only for Python 3.12 on
        h.update(array_bytes(images))  # type: ignore[arg-type]
    else:
        h.update(listing_hash(images, [""] * len(images)).encode())
    return h.hexdigest()


def cached_features(extractor: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The extractor's output (float32) for every image of `x`, from the disk cache or computed and stored."""
    from imgtrain.analysis.evaluate import predict_arrays
    from imgtrain.data.cache import load_cached

    def build() -> dict[str, np.ndarray]:
        return {"features": predict_arrays(extractor, x, batch_size).astype(np.float32)}

    return load_cached("features", _key(extractor, x, x.shape), build)["features"]


def split_features(extractor: keras.Model, split: Split, skipped: dict[str, str], batch_size: int = 256) -> Split:
    """`split` with the extractor's output in place of its images (a Split in memory). A streamed split is
    decoded batch by batch and only the features are kept; its undecodable files are left out and recorded in
    `skipped`, on the run that computes the features and on every run that reads them back."""
    from imgtrain.analysis.evaluate import predict_probs
    from imgtrain.core.errors import DataError
    from imgtrain.data.cache import load_cached
    from imgtrain.data.dataset import Split

    if split.in_memory:  # split.x is set; else split.paths
        return Split(split.y, x=cached_features(extractor, cast(np.ndarray, split.x), batch_size))

    def build() -> dict[str, np.ndarray]:
        bad: dict[str, str] = {}
        features, _, rows = predict_probs(extractor, split, batch_size, skipped=bad)
        return {
            "features": features.astype(np.float32),
            "rows": rows,
            "bad_paths": np.array(list(bad), dtype=str),
            "bad_reasons": np.array(list(bad.values()), dtype=str),
        }

    shape = extractor.input_shape[1:]
    arrays = load_cached("features", _key(extractor, cast("list[str]", split.paths), shape), build)
    skipped.update(zip(arrays["bad_paths"].tolist(), arrays["bad_reasons"].tolist()))
    if not len(arrays["rows"]):
        raise DataError(f"none of the {len(split)} files of this split could be decoded")
    return Split(split.y[arrays["rows"]], x=arrays["features"])
