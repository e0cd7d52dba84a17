"""The fused BatchNormalization path trains the same model as Keras' own and leaves plain Keras layers behind."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imgtrain.batchnorm import fused_batchnorm  # noqa: E402


def bn_model(dense: bool = False):
    keras.utils.set_random_seed(1)
    if dense:  # 2-D input: not the fused kernel's case, Keras' path must run
        body = [keras.layers.Flatten(), keras.layers.Dense(16), keras.layers.BatchNormalization()]
    else:
        body = [keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(momentum=0.5),
                keras.layers.ReLU(), keras.layers.Conv2D(8, 3, use_bias=False),
                keras.layers.BatchNormalization(center=False), keras.layers.Flatten()]
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
    for name, a, b in zip(names, keras_model.get_weights(), fused_model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5, err_msg=name)  # 8 steps of SGD, moving stats too
    np.testing.assert_allclose(fused_model.predict(x, verbose=0), keras_model.predict(x, verbose=0), atol=1e-5)


def test_layers_stay_plain_keras(tmp_path):
    keras_call = keras.layers.BatchNormalization.call
    model, x = trained(True)
    assert keras.layers.BatchNormalization.call is keras_call  # restored when the block ends
    path = tmp_path / "m.keras"
    model.save(path)
    layers = [layer for layer in keras.models.load_model(path).layers
              if type(layer) is keras.layers.BatchNormalization]
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
