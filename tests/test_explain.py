"""Heatmaps that mean something: on a task decided only by a bright patch in a known corner, Grad-CAM points at the
patch; re-initialised weights give other maps (Adebayo et al. 2018); the same image gives the same map."""

import json

import keras
import numpy as np
import pytest
from conftest import needs_bf16, run_cli
from PIL import Image

from imgtrain.analysis.heatmaps import explain, feature_layer
from imgtrain.core.errors import ImgtrainError

SIZE, PATCH = 32, 6


def patch_images(n: int, seed: int):
    """n grayscale 32x32 images on a textured background (smooth blobs and grain) in three classes: no patch, a
    bright 6x6 patch somewhere in the top-left quadrant, or one in the bottom-right. The patch-free class makes each
    patch class need its own detector (with two classes, "no patch top-left" would do for the second). Returns
    (images, labels, masks of each image's patch quadrant: empty for the patch-free class)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    small = rng.uniform(30, 150, (n, 4, 4))
    x = np.stack([np.asarray(Image.fromarray(s.astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)) for s in small])
    x = np.clip(x + rng.normal(0, 12, x.shape), 0, 200)
    masks = np.zeros((n, SIZE, SIZE), bool)
    half = SIZE // 2
    for i, label in enumerate(y):
        if label == 0:
            continue
        r, c = rng.integers(1, half - PATCH, 2) + (half - 1 if label == 2 else 0)
        x[i, r : r + PATCH, c : c + PATCH] = 255
        masks[i, half:, half:] = label == 2
        masks[i, :half, :half] = label == 1
    return x.astype(np.uint8)[..., None], y, masks


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """cnn_small trained on 1,200 patch images written as PNG files (a folder run), and 200 new test images."""
    from conftest import write_pngs

    from imgtrain import train

    root = tmp_path_factory.mktemp("patch")
    x, y, _ = patch_images(1800, seed=0)
    write_pngs(root / "images", x, y, ["none", "top-left", "bottom-right"])
    run = train(
        dataset=f"folder:{root / 'images'}",
        model="cnn_small",
        epochs=4,
        batch_size=32,
        val_split=0,
        test_split=0.1,
        monitor="loss",
        out=str(root / "run"),
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    return run, patch_images(200, seed=1)


def test_gradcam_points_at_the_patch_that_decides_the_class(patch_run):
    run, (x, y, masks) = patch_run
    assert run.metrics["test_accuracy"] >= 0.98  # the model did learn the task
    got = explain(run.model, x)
    assert got.method == "hirescam" and got.layer == "pool2" and got.heatmaps.shape == (200, SIZE, SIZE)
    np.testing.assert_array_equal(got.classes, got.probs.argmax(1))  # the predicted class, by default
    patch = y > 0
    mass = (got.heatmaps * masks).sum((1, 2))[patch] / got.heatmaps.sum((1, 2))[patch]
    # measured: at least 0.89 on every image, median 0.95; the issue asks at least 60 % of each map's mass
    assert mass.min() >= 0.6, np.sort(mass)[:5]
    # the other class's map, asked for by index, is not the same map
    other = explain(run.model, x[:20], class_index=(got.classes[:20] + 1) % 3)
    assert (other.classes == (got.classes[:20] + 1) % 3).all() and not np.allclose(other.heatmaps, got.heatmaps[:20])


def test_reinitialised_weights_change_the_maps_sanity_check(patch_run):
    """Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): a map that survives randomising the
    model's weights shows the image, not the model. Spearman rank correlation of each image's map, trained against
    re-initialised weights (same architecture, same explained class)."""
    from scipy.stats import spearmanr

    run, (x, _, _) = patch_run
    trained = explain(run.model, x[:50])
    keras.utils.set_random_seed(5)
    fresh = keras.models.clone_model(run.model)  # new layers, freshly initialised weights
    random = explain(fresh, x[:50], class_index=trained.classes)
    # the trained model's maps must show something: a constant map has no ranks (Spearman's rho is NaN), and a check
    # that counted NaN as "no agreement" would pass for an explainer that returns the same flat map for every model
    spread = trained.heatmaps.reshape(len(trained.heatmaps), -1).std(axis=1)
    assert (spread > 0).all(), f"{int((spread == 0).sum())} of {len(spread)} maps of the trained model are constant"
    rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained.heatmaps, random.heatmaps, strict=True)]
    # a randomised model's map may be flat (its ReLUs all off): it ranks nothing, so it agrees with nothing
    rho = [0.0 if np.ptp(b) == 0 else r for r, b in zip(rho, random.heatmaps, strict=True)]
    assert not np.isnan(rho).any() and np.median(rho) < 0.5, np.median(rho)  # measured: 0.04


def test_the_same_image_gives_the_same_map_and_saliency_for_a_model_without_convolutions(patch_run):
    run, (x, _, _) = patch_run
    a, b = explain(run.model, x[:8]), explain(run.model, x[:8])
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)
    mlp = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="probs"),
        ]
    )
    s = explain(mlp, x[:8])
    assert s.method == "saliency" and s.layer is None and s.heatmaps.shape == (8, SIZE, SIZE)
    assert s.heatmaps.max() == 1.0 and s.heatmaps.min() >= 0
    with pytest.raises(ImgtrainError, match="no convolutional feature map for gradcam; use method saliency"):
        explain(mlp, x[:1], method="gradcam")
    with pytest.raises(
        ImgtrainError,
        match=r"layer 'fc' is not a convolutional feature map of this model; "
        r"valid: conv1, pool1, conv2, pool2",
    ):
        explain(run.model, x[:1], layer="fc")


@pytest.mark.parametrize("precision", ["float32", pytest.param("mixed_bfloat16", marks=needs_bf16)])
def test_a_pretrained_backbone_gets_gradcam_on_its_last_feature_map(precision):
    from imgtrain.core.backend import precision as use_precision
    from imgtrain.models import build_model

    with use_precision(precision):
        model = build_model("mobilenet_v3_small", (64, 64, 3), 3, weights="none")
    x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    got = explain(model, x, class_index=2)
    assert feature_layer(model).name == "backbone" and got.layer == "backbone" and got.method == "hirescam"
    assert got.heatmaps.shape == (4, 64, 64) and np.isfinite(got.heatmaps).all() and (got.classes == 2).all()
    # global average pooling: the gradient is constant over the map, so Grad-CAM's channel means change nothing
    classic = explain(model, x, class_index=2, method="gradcam")
    np.testing.assert_allclose(classic.heatmaps, got.heatmaps, atol=1e-5 if precision == "float32" else 2e-2)


def test_explain_command_writes_an_overlay_and_the_numbers_for_each_image(patch_run, tmp_path):
    from conftest import write_pngs

    run, (x, y, masks) = patch_run
    write_pngs(tmp_path / "in", x[:4], y[:4], ["a", "b", "c"])
    (tmp_path / "in" / "a" / "broken.png").write_bytes(b"not an image")
    proc = run_cli("explain", run.run_dir, tmp_path / "in", "--class", "bottom-right", "--out", tmp_path / "out")
    assert "skipped" in proc.stderr and "broken.png" in proc.stderr
    assert (
        proc.stdout.strip().splitlines()[-1] == f"written: 4 overlays and JSON files in {tmp_path / 'out'} (1 skipped)"
    )
    for i, path in enumerate(sorted((tmp_path / "in").rglob("0*.png"))):
        row = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert row["file"] == str(path) and row["method"] == "hirescam" and row["layer"] == "pool2"
        assert row["explained"]["class"] == "bottom-right" and row["explained"]["index"] == 0  # classes sorted
        assert sorted(t["class"] for t in row["top"]) == ["bottom-right", "none", "top-left"]
        heat = np.array(row["heatmap"])
        assert heat.shape == (SIZE, SIZE) and heat.max() <= 1 and heat.min() >= 0
        with Image.open(row["overlay"]) as im:  # enlarged 7x (32 -> 224) to be seen
            assert im.size == (224, 224) and im.mode == "RGB"
    proc = run_cli("explain", run.run_dir, tmp_path / "in", "--class", "nope", "--out", tmp_path / "o2", check=False)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: unknown class 'nope'; valid: bottom-right, none, top-left"
    )
    proc = run_cli("explain", run.run_dir, tmp_path / "in", "--method", "lime", check=False)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: unknown method 'lime'; valid: auto, hirescam, gradcam, saliency"
    )
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("name", ["cnn3", "cnn_bn", "cnn_small", "mlp", "resnet9"])
def test_every_model_of_imgtrain_gets_a_map_of_its_input_size(name):
    """The registry's own models (the backbones: above, and their shared Keras layout): a map per image, at the
    input's size, values in [0, 1], not all zero; the MLP by saliency, every other by its last feature map."""
    from imgtrain.models import build_model

    model = build_model(name, (28, 28, 1), 10)
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
    got = explain(model, x)
    assert got.method == ("saliency" if name == "mlp" else "hirescam")
    assert got.heatmaps.shape == (3, 28, 28) and got.heatmaps.min() >= 0 and got.heatmaps.max() == 1.0
    assert (got.layer is None) == (name == "mlp")


@pytest.mark.parametrize(
    "images, message",
    [
        (
            lambda x: x[:2] / 255.0,
            r"pixels range over \[0, 0.784314\], as if divided by 255; this model takes raw pixels 0-255 and "
            r"rescales them itself: pass images \* 255 \(or the uint8 images\)",
        ),
        (
            lambda x: x[:2, ..., 0],
            r"images have shape \(2, 28, 28\); this model takes \(n, 28, 28, 1\), raw pixels 0-255",
        ),
        (lambda x: x[:2] * 2.0, r"pixels range over \[0, 400\]; this model takes raw pixels 0-255"),
        (lambda x: x[:2].astype(str), r"images have dtype <U3; pixels are numbers 0-255 \(uint8 or float\)"),
    ],
)
def test_images_that_cannot_be_raw_pixels_are_one_line(images, message):
    """A notebook's x / 255 would be rescaled again by the model: every map of a black image, without a word; a
    wrong shape would surface Keras' own message. `explain` and `evaluate` say so in one line."""
    import imgtrain
    from imgtrain.data.dataset import Split
    from imgtrain.models import build_model

    x = np.zeros((2, 28, 28, 1), np.uint8)
    x[:, 10:18, 10:18] = 200
    model = build_model("cnn_small", (28, 28, 1), 10)
    with pytest.raises(ImgtrainError, match=f"^{message}$"):
        explain(model, images(x))
    with pytest.raises(ImgtrainError, match=f"^{message}$"):
        imgtrain.evaluate(model, Split(np.zeros(2, np.int64), x=images(x)), [str(k) for k in range(10)])
    assert imgtrain.evaluate(model, Split(np.zeros(2, np.int64), x=x), [str(k) for k in range(10)])["n"] == 2
    assert explain(build_model("cnn_small", (28, 28, 1), 10), x.astype(np.float32)).heatmaps.shape == (2, 28, 28)
