"""Why a model decided: a heatmap over the image for one class.

For a convolutional model, the last convolutional feature map A (h × w × k) and the gradient G of the class's logit
with respect to it: Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel by G's mean over the map,
ReLU(Σ_k mean(G_k) A_k); HiResCAM (Draelos & Carin, 2020) multiplies element by element, ReLU(Σ_k G_k ⊙ A_k). The
two give the same map when the head averages the map (a backbone's global average pooling: G_k is constant over
it); where the head sees each position on its own (Flatten then Dense, as seed 000's CNN), HiResCAM is the logit's
exact split over positions and Grad-CAM's averaging can point elsewhere (on the patch task of tests/test_explain.py,
cnn_small: HiResCAM puts at least 89 % of every map on the patch's quadrant; Grad-CAM as little as 30 %, or gives
an all-zero map). So `auto` uses HiResCAM; `gradcam` gives the classic map. Maps are upsampled to the image (bilinear).
A model with no convolution (the MLP) gets an input-gradient saliency map (Simonyan et al., 2014): the largest
|d logit / d pixel| over the colour channels. Both use the logit (the softmax's input), not the probability, whose
gradient vanishes where the model is sure. Maps are scaled to [0, 1] by their own maximum (all zeros where nothing
speaks for the class). No randomness: the same model and image give the same map.

Gradients come from TensorFlow (`imgtrain explain` loads every model on it; a .keras file is backend-neutral).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imgtrain.analysis.evaluate import checked_pixels
from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import keras
    import numpy.typing as npt

METHODS = ("auto", "hirescam", "gradcam", "saliency")


@dataclass
class Explanation:
    heatmaps: np.ndarray  # (n, height, width) float32 in [0, 1], at the model's input size
    classes: np.ndarray  # (n,) the class index each map explains
    probs: np.ndarray  # (n, classes) the model's probabilities
    method: str  # hirescam | gradcam | saliency
    layer: str | None  # the feature map's layer (the CAM methods)


def _conv_like(layer: keras.layers.Layer) -> bool:
    import keras

    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    if isinstance(layer, convs):
        return True
    return isinstance(layer, keras.Model) and any(isinstance(sub, convs) for sub in layer._flatten_layers())


def _outer_output(layer: keras.layers.Layer) -> Any:
    """The layer's output in the model that calls it (a nested model's `.output` is its own graph's)."""
    return layer._inbound_nodes[0].output_tensors[0]


def feature_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers whose output is a feature map Grad-CAM can use: 4-D, more than 1×1, at or after the first
    convolution (a backbone counts as one), in order."""
    out: list[keras.layers.Layer] = []
    seen_conv = False
    for layer in model.layers:
        seen_conv = seen_conv or _conv_like(layer)
        shape = tuple(_outer_output(layer).shape) if layer._inbound_nodes else ()
        if seen_conv and len(shape) == 4 and (shape[1] or 0) * (shape[2] or 0) > 1:
            out.append(layer)
    return out


def feature_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer | None:
    """The layer Grad-CAM reads: `name`, or the last feature map (feature_layers); None when there is none."""
    found = feature_layers(model)
    if name is None:
        return found[-1] if found else None
    if name not in [layer.name for layer in found]:
        raise ImgtrainError(
            f"layer {name!r} is not a convolutional feature map of this model; valid: "
            f"{', '.join(layer.name for layer in found) or 'none (use --method saliency)'}"
        )
    return model.get_layer(name)


def _logit_model(
    model: keras.Model, feature: keras.layers.Layer | None = None
) -> tuple[keras.Model, keras.layers.Layer]:
    """A model from the images to ([the feature map,] the head's input), and the head's kernel and bias: the
    logits are computed from the head's input in float32."""
    import keras

    from imgtrain.models import HEAD

    head = model.get_layer(HEAD)
    outputs = [head._inbound_nodes[0].input_tensors[0]]
    if feature is not None:
        outputs.insert(0, _outer_output(feature))
    return keras.Model(model.inputs, outputs), head


class Explainer:
    """Heatmaps of one model by one method, the gradient step traced once (tf.function) and reused: what the
    server keeps, and what `explain` makes for one call."""

    def __init__(self, model: keras.Model, method: str = "auto", layer: str | None = None) -> None:
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise ImgtrainError(
                f"heatmaps need the TensorFlow backend (this process runs "
                f"{keras.backend.backend()}); `imgtrain explain` loads any model on it"
            )
        if method not in METHODS:
            raise ImgtrainError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        feature = feature_layer(model, layer) if method != "saliency" else None
        if method in ("hirescam", "gradcam") and feature is None:
            raise ImgtrainError(f"this model has no convolutional feature map for {method}; use method saliency")
        self.model = model
        self.method = ("hirescam" if method == "auto" else method) if feature is not None else "saliency"
        self.layer = feature.name if feature is not None else None
        self._grad_model, self._head = _logit_model(model, feature)
        self.num_classes = self._head.units
        # no autograph: the step has no Python control flow on tensors, and converting it took half its tracing time
        self._maps = tf.function(self._batch_maps, reduce_retracing=True, autograph=False)

    def _batch_maps(self, x: Any, classes: Any, chosen: Any) -> tuple[Any, Any, Any]:
        """(maps (n, h, w) in [0, 1], probabilities, the classes explained): `classes` where `chosen`, else the
        predicted class."""
        import tensorflow as tf

        kernel, bias = tf.cast(self._head.kernel, tf.float32), tf.cast(self._head.bias, tf.float32)
        x = tf.cast(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outs = self._grad_model(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            logits = tf.cast(outs[-1], tf.float32) @ kernel + bias
            classes = tf.where(chosen, classes, tf.argmax(logits, axis=1))
            score = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))  # each image's own class
        target = x if self.method == "saliency" else outs[0]
        grads = tf.cast(tape.gradient(score, target), tf.float32)
        if self.method == "saliency":
            cam = tf.reduce_max(tf.abs(grads), axis=-1)
        else:
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True) if self.method == "gradcam" else grads
            cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(outs[0], tf.float32), axis=-1))[..., None]
            cam = tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.maximum(peak, 1e-12), tf.zeros_like(cam))
        return cam, tf.nn.softmax(logits), classes

    def __call__(
        self, images: np.ndarray, class_index: npt.ArrayLike | None = None, batch_size: int = 64
    ) -> Explanation:
        """Maps for `images` (n × h × w × c at the model's input size), for each image's predicted class or
        `class_index` (one int for all, or one per image; -1: the predicted class)."""
        images = checked_pixels(np.asarray(images), tuple(self.model.input_shape[1:]))
        n, k = len(images), self.num_classes
        wanted = (
            np.full(n, -1, np.int64)
            if class_index is None
            else np.broadcast_to(np.asarray(class_index, np.int64), (n,))
        )
        if ((wanted < -1) | (wanted >= k)).any():
            raise ImgtrainError(f"class index out of range: the model has classes 0-{k - 1}")
        maps, probs, classes = (
            [np.zeros((0, *self.model.input_shape[1:3]), np.float32)],
            [np.zeros((0, k), np.float32)],
            [np.zeros(0, np.int64)],
        )
        for i in range(0, n, batch_size):
            chosen = wanted[i : i + batch_size]
            m, p, c = self._maps(images[i : i + batch_size], np.maximum(chosen, 0), chosen >= 0)
            maps.append(m.numpy().astype(np.float32))
            probs.append(p.numpy())
            classes.append(c.numpy().astype(np.int64))
        return Explanation(
            np.concatenate(maps), np.concatenate(classes), np.concatenate(probs), self.method, self.layer
        )


def explain(
    model: keras.Model,
    images: np.ndarray,
    class_index: npt.ArrayLike | None = None,
    method: str = "auto",
    layer: str | None = None,
    batch_size: int = 64,
) -> Explanation:
    """Heatmaps for `images` (uint8 or float, n × h × w × c at the model's input size): for each image's predicted
    class, or `class_index` (one int for all, or one per image). `method`: auto (HiResCAM where the model has a
    convolutional feature map, else saliency), hirescam, gradcam, saliency; `layer` names the feature map."""
    return Explainer(model, method, layer)(images, class_index, batch_size)
