"""The fused BatchNormalization path trains the same model as Keras' own and leaves plain Keras layers behind."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imgtrain.training.batchnorm import fused_batchnorm  # noqa: E402


def bn_model(dense: bool = False):
    keras.utils.set_random_seed(1)
    if dense:  # 2-D input: not the fused kernel's case, Keras' path must run
        body = [keras.layers.Flatten(), keras.layers.Dense(16), keras.layers.BatchNormalization()]
    else:
        body = [
            keras.layers.Conv2D(8, 3),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 3, use_bias=False),
            keras.layers.BatchNormalization(center=False),
            keras.layers.Flatten(),
        ]
    model = keras.Sequential([keras.layers.Input((10, 10, 3)), *body, keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", jit_compile=False)
    return model


def trained(fused: bool, dense: bool = False):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (64, 10, 10, 3)).astype("float32")  # mean and scale far from 0 and 1
    y = rng.integers(0, 4, 64)
    model = bn_model(dense)
    if fused:
        with fused_batchnorm("tensorflow"):
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    else:
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model, x


@pytest.mark.parametrize("dense", [False, True])
def test_fused_training_matches_keras(dense):
    keras_model, x = trained(False, dense)
    fused_model, _ = trained(True, dense)
    names = [w.path for w in keras_model.weights]
    assert any("moving_variance" in n for n in names)
    for name, a, b in zip(names, keras_model.get_weights(), fused_model.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5, err_msg=name)  # 8 steps of SGD, moving stats too
    np.testing.assert_allclose(fused_model.predict(x, verbose=0), keras_model.predict(x, verbose=0), atol=1e-5)


def test_layers_stay_plain_keras(tmp_path):
    keras_call = keras.layers.BatchNormalization.call
    model, x = trained(True)
    assert keras.layers.BatchNormalization.call is keras_call  # restored when the block ends
    path = tmp_path / "m.keras"
    model.save(path)
    layers = [layer for layer in keras.models.load_model(path).layers if type(layer) is keras.layers.BatchNormalization]
    assert len(layers) == 2


def test_other_backends_untouched():
    keras_call = keras.layers.BatchNormalization.call
    with fused_batchnorm("jax"):
        assert keras.layers.BatchNormalization.call is keras_call
    with fused_batchnorm("tensorflow"):
        assert keras.layers.BatchNormalization.call is not keras_call
        with fused_batchnorm("tensorflow"):  # nested: still one patch, restored by the outer block
            pass
        assert keras.layers.BatchNormalization.call is not keras_call
    assert keras.layers.BatchNormalization.call is keras_call


def nested_model():
    """A pretrained-style part called with training=False (conv -> BN pairs of every foldable kind, one BN that
    follows no convolution), with statistics far from 0 and 1, under a trainable head."""
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(2)
    i = keras.Input((12, 12, 3))
    h = keras.layers.BatchNormalization()(i)  # reads the input: nothing to fold it into
    h = keras.layers.Conv2D(8, 3, use_bias=False)(h)
    h = keras.layers.Activation("hard_swish")(keras.layers.BatchNormalization()(h))
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=True)(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.Conv2D(6, 1)(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization(center=False)(h))
    body = keras.Model(i, h, name="backbone")
    for layer in body.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for var, (lo, hi) in (
                (layer.moving_mean, (-1, 1)),
                (layer.moving_variance, (0.3, 3)),
                (layer.gamma, (0.5, 1.5)),
                (layer.beta, (-0.5, 0.5)),
            ):
                if var is not None:
                    var.assign(rng.uniform(lo, hi, var.shape))
    inputs = keras.Input((12, 12, 3))
    head = keras.layers.Dense(3, activation="softmax", name="probs")
    model = keras.Model(inputs, head(body(inputs, training=False)))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy", jit_compile=False)
    x = rng.normal(1.0, 2.0, (32, 12, 12, 3)).astype("float32")
    return model, body, head, x, rng.integers(0, 3, 32)


def _statistics(body):
    return [
        np.asarray(v)
        for layer in body.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def test_a_part_called_with_training_false_keeps_its_statistics_and_folds_into_its_convolutions():
    """Keras 3 lets fit's training=True override the training=False a backbone was called with
    (keras-team/keras#20285): its statistics drift. Inside frozen_statistics the part runs in inference mode,
    three of its four BatchNormalization layers folded into the convolution before them: the same outputs and
    gradients as the part in inference mode, statistics bit-identical after training, the rest still learning,
    and plain Keras layers afterwards."""
    import tensorflow as tf

    from imgtrain.training.batchnorm import _FOLDED, frozen_statistics

    model, body, head, x, y = nested_model()
    keras_calls = [
        cls.call for cls in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization)
    ]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:  # the reference: the part itself called in inference mode
        loss = tf.reduce_sum(head(body(xt, training=False)) * [1.0, -2.0, 0.5])
    reference, want = tape.gradient(loss, model.trainable_variables), np.asarray(head(body(xt, training=False)))
    with frozen_statistics(model) as held:
        assert held == 4 and len(_FOLDED) == 3
        with tf.GradientTape() as tape:
            out = model(xt, training=True)
            loss = tf.reduce_sum(out * [1.0, -2.0, 0.5])
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
        for got, ref, var in zip(
            tape.gradient(loss, model.trainable_variables), reference, model.trainable_variables, strict=True
        ):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5, err_msg=var.path)
        before, weights = _statistics(body), [np.asarray(w) for w in body.trainable_weights]
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert all(np.array_equal(a, b) for a, b in zip(_statistics(body), before, strict=True))
        assert all(
            np.abs(np.asarray(w) - w0).max() > 1e-4 for w, w0 in zip(body.trainable_weights, weights, strict=True)
        )
    assert [
        cls.call for cls in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization)
    ] == keras_calls and not len(_FOLDED)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # plain Keras again: its statistics move (Keras' override)
    assert not all(np.array_equal(a, b) for a, b in zip(_statistics(body), before, strict=True))
