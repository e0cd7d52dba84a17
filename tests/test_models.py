import numpy as np
import pytest

from imgtrain.core.errors import ConfigError, UnknownName
from imgtrain.models import MODELS, build_model
from imgtrain.models.backbones import BACKBONES

# the input shapes the registered datasets produce: mnist/fashion_mnist, cifar10, a colour folder of odd size
SHAPES = [(28, 28, 1), (32, 32, 3), (48, 40, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in BACKBONES])  # backbones: test_transfer.py
def test_every_model_trains_a_step_on_every_shape(name, shape):
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(name, shape, 5)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, *shape)).astype(np.uint8)
    y = rng.integers(0, 5, 8)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "weights moved"
    probs = model.predict(x, verbose=0)
    assert probs.shape == (8, 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_seed_architectures_have_the_seeds_parameter_counts():
    assert build_model("cnn_small", (28, 28, 1), 10).count_params() == 824_458  # seed 000
    assert build_model("cnn_bn", (28, 28, 1), 10).count_params() == 102_730  # seed 004, Fashion-MNIST head
    assert build_model("mlp", (28, 28, 1), 10).count_params() == 101_770  # seed 003: 784-128-10
    assert build_model("mlp", (28, 28, 1), 10, width=100, activation="sigmoid", dropout=0).count_params() == 79_510


def test_unknown_model_and_option_are_one_line_errors():
    with pytest.raises(UnknownName, match=r"unknown model 'cnn_bm'; known: cnn3, cnn_bn, cnn_small, convnext_tiny, "):
        build_model("cnn_bm")
    with pytest.raises(ConfigError, match=r"model 'mlp' has no option 'widht'; options: width, depth"):
        build_model("mlp", widht=3)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_backbone_refuses_an_input_below_its_minimum_in_one_line(name):
    """MNIST's 28x28 is below the 32x32 every keras.applications backbone needs: one line says so (image_size
    defaults to the backbone's 224x224 in a run, so this needs an explicit small image_size)."""
    with pytest.raises(ConfigError) as err:
        build_model(name, (28, 28, 1), 5, weights="none")
    assert str(err.value).startswith(
        f"model {name!r} cannot be built for input (28, 28, 1): Input size must be at least 32x32"
    ) and "\n" not in str(err.value)


def test_augmentation_is_inside_the_model_and_off_at_inference():
    model = build_model("cnn_small", (28, 28, 1), 10, augment="shift")
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype("float32")
    assert np.allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert any("random_translation" in layer.name for layer in model.layers)


def test_flip_tta_averages_each_image_with_its_mirror():
    from imgtrain.analysis.evaluate import predict_arrays, with_tta

    model = build_model("cnn_small", (12, 10, 3), 4, dense=8)
    x = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 3)).astype("uint8")
    plain, mirrored = predict_arrays(model, x), predict_arrays(model, x[:, :, ::-1])
    assert np.abs(plain - mirrored).max() > 1e-3  # the model itself is not mirror-symmetric
    np.testing.assert_allclose(predict_arrays(with_tta(model, "flip"), x), (plain + mirrored) / 2, atol=1e-5)
    assert with_tta(model, "none") is model
    with pytest.raises(ConfigError, match="unknown tta 'rotate'; valid: none, flip"):
        with_tta(model, "rotate")


def test_resnet9_without_a_stem_convolves_the_pixels_directly():
    plain, stemless = build_model("resnet9"), build_model("resnet9", stem=0)
    assert plain.get_layer("stage1_conv").kernel.shape == (3, 3, 16, 16)
    assert stemless.get_layer("stage1_conv").kernel.shape == (3, 3, 1, 16)
    assert "stem_conv" not in [layer.name for layer in stemless.layers]
