"""The frozen stage on cached features: while nothing before the head trains and nothing random changes its input,
the body's output for each image is the same in every epoch, so it is computed once (and kept on disk, keyed by
the body's weights and the images' bytes) and the head trains on it. The head's layers are shared with the whole
model, so what the head learns is in the model that is saved, exported and served.

Used by stages.fit_stages when `cache_features` is on (the default) and the split is in memory; a streamed split,
augmentation, or dropout inside the body trains through the frozen body instead.
"""
from __future__ import annotations

import hashlib

import keras
import numpy as np

from .models import HEAD


def head_chain(model) -> list:
    """The layers that make the head: the softmax layer `probs` and the dropout layers right before it (random,
    so they stay out of the cached part)."""
    chain = [model.get_layer(HEAD)]
    while True:
        before = chain[0].input._keras_history.operation
        if not isinstance(before, keras.layers.Dropout):
            return chain
        chain.insert(0, before)


def cacheable(model) -> bool:
    """Whether the part before the head computes the same output for an image in every training step: no layer of
    it draws random numbers in training (augmentation, dropout). A pretrained backbone is called with
    training=False, so the dropout inside it never acts."""
    extractor = keras.Model(model.inputs, head_chain(model)[0].input)
    return not any(_draws_random(layer) for layer in extractor.layers if layer.name != "backbone")


def _draws_random(layer) -> bool:
    from .callbacks import seed_generators

    if isinstance(layer, keras.layers.Dropout) and layer.rate == 0:
        return False
    return bool(seed_generators(layer))


def split_model(model):
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


def _key(extractor, x: np.ndarray) -> str:
    """sha256 over the extractor's architecture and weights and the images' bytes: a changed backbone, other
    weights or other images (or another size, or order) give another key."""
    from .data.cache import array_bytes
    from .train import weights_hash

    h = hashlib.sha256(extractor.to_json().encode())
    h.update(weights_hash(extractor).encode())
    h.update(str(x.shape).encode())
    h.update(array_bytes(x))
    return h.hexdigest()


def cached_features(extractor, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The extractor's output (float32) for every image of `x`, from the disk cache or computed and stored."""
    from .data.cache import load_cached
    from .evaluate import predict_arrays

    def build():
        return {"features": predict_arrays(extractor, x, batch_size).astype(np.float32)}

    return load_cached("features", _key(extractor, x), build)["features"]
