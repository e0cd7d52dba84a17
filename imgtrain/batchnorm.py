"""BatchNormalization through TensorFlow's fused kernel while imgtrain trains.

Keras 3 computes a BatchNormalization training step from generic ops (moments, then the normalisation, each with
its gradient); TensorFlow's FusedBatchNormV3 does each direction in one kernel. On the 2-core EPYC, seed 004's
CNN+BN (bfloat16, batch 256, Fashion-MNIST) trains at 5,800-6,100 img/s with it against 1,850-2,100 without.

The layers stay `keras.layers.BatchNormalization`: saved models are plain Keras and load anywhere. Only the
training-time computation changes, only on the TensorFlow backend, only inside `fused_batchnorm()`, and only for
the common case (4-D input, channels last, no mask, not synchronized, no renorm); anything else takes Keras' path.
"""
from __future__ import annotations

from contextlib import contextmanager


def _fused_call(keras_call):
    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.synchronized or self.renorm \
                or len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return keras_call(self, inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16) else tf.cast(inputs, tf.float32)  # kernel's types
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        out, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                               data_format="NHWC", is_training=True)
        n = tf.cast(tf.size(x) // channels, tf.float32)  # values per channel in this batch
        variance = variance * (n - 1.0) / n  # the kernel returns the unbiased variance; Keras keeps the biased one
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + tf.cast(variance, self.moving_variance.dtype) * (1 - momentum))
        return tf.cast(out, self.compute_dtype)

    call.keras_call = keras_call
    return call


@contextmanager
def fused_batchnorm(backend: str):
    """While active (and `backend` is tensorflow), BatchNormalization layers traced for training use the fused
    kernel. A model's train step is traced at its first `fit`, so that call must be inside the block."""
    if backend != "tensorflow":
        yield
        return
    import keras

    layer = keras.layers.BatchNormalization
    keras_call = layer.call
    if hasattr(keras_call, "keras_call"):  # already active (nested)
        yield
        return
    layer.call = _fused_call(keras_call)
    try:
        yield
    finally:
        layer.call = keras_call
