"""Odd files, hostile inputs, divergence and reproducibility: each decoded right, or refused with a reason."""
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import run_cli
from imgtrain import load_dataset, train
from imgtrain.config import make_config, parse_assignment
from imgtrain.data.images import DECODE_ERRORS, decode
from imgtrain.errors import ConfigError, DataError, ImgtrainError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """cat/ holds images Pillow can read in awkward forms; dog/ also holds files that must be skipped."""
    root = tmp_path_factory.mktemp("odd")
    cat, dog, empty = root / "cat", root / "dog", root / "empty"
    for d in (cat, dog, empty):
        d.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _save(rgb.convert("CMYK"), cat / "cmyk.jpg")
    _save(Image.fromarray(np.full((20, 30), 65535, np.uint16)), cat / "sixteen.png")
    _save(rgb.convert("P"), cat / "palette.png")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    _save(pal, cat / "palette_alpha.png", transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    _save(rgba, cat / "transparent.png")
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(cat / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _save(Image.new("L", (1, 1), 200), cat / "tiny.png")
    _save(rgb, cat / "webp.webp")
    _save(rgb, cat / "bitmap.bmp")
    weird = os.fsdecode(b"\xff\xfeodd-name.png")  # not valid UTF-8
    _save(rgb, os.path.join(os.fsdecode(bytes(cat)), weird))
    for i in range(4):
        _save(Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)), dog / f"ok{i}.png")
    (dog / "empty.jpg").write_bytes(b"")
    (dog / "text.jpg").write_text("I am not a JPEG")
    good = (dog / "ok0.png").read_bytes()
    (dog / "truncated.png").write_bytes(good[: len(good) // 2])
    _save(Image.new("1", (10_000, 10_000)), dog / "bomb.png")
    (dog / "folder.jpg").mkdir()  # a directory with an image's name is walked, not decoded
    os.symlink(dog / "loop_b.jpg", dog / "loop_a.jpg")
    os.symlink(dog / "loop_a.jpg", dog / "loop_b.jpg")
    return root


def test_odd_images_decode_or_are_skipped_with_a_reason(odd_folder):
    ds = load_dataset(f"folder:{odd_folder}", val_split=0, test_split=0, image_size=(20, 30), channels=3)
    assert ds.class_names == ["cat", "dog", "empty"]
    assert ds.train.counts(3) == [10, 4, 0], "every readable image kept"
    reasons = {os.path.basename(p): r for p, r in ds.skipped.items()}
    assert set(reasons) == {"empty.jpg", "text.jpg", "truncated.png", "bomb.png", "loop_a.jpg", "loop_b.jpg"}, reasons
    assert "over the limit" in reasons["bomb.png"]
    assert "classes with no training images: empty" in ds.notes


def test_odd_modes_decode_to_the_right_pixels(odd_folder):
    cat = odd_folder / "cat"
    assert decode(cat / "sixteen.png", (20, 30), 1).min() == 255, "16-bit is scaled, not clipped to 255 by luck"
    assert decode(cat / "transparent.png", (20, 30), 3).max() == 0, "fully transparent is black"
    assert decode(cat / "animated.gif", (20, 30), 3)[0, 0].tolist() == [255, 0, 0], "the first frame"
    assert decode(cat / "tiny.png", (5, 5), 1).tolist() == np.full((5, 5, 1), 200).tolist()
    assert decode(cat / "cmyk.jpg", (20, 30), 3).shape == (20, 30, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    arr = decode(tmp_path / "rotated.jpg", (40, 20), 1)
    assert arr.shape == (40, 20, 1) and arr[:8].mean() > 200 and arr[-8:].mean() < 50, "white ends up on top"


def test_one_class_and_unknown_test_classes_are_refused(tmp_path):
    for cls in ("a",):
        (tmp_path / "one" / cls).mkdir(parents=True)
        _save(Image.new("L", (8, 8)), tmp_path / "one" / cls / "x.png")
    with pytest.raises(DataError, match="one class"):
        load_dataset(f"folder:{tmp_path / 'one'}")
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "zebra")):
        (tmp_path / "two" / split / cls).mkdir(parents=True)
        _save(Image.new("L", (8, 8)), tmp_path / "two" / split / cls / "x.png")
    with pytest.raises(DataError, match=r"test/ has classes \['zebra'\] that train/ lacks"):
        load_dataset(f"folder:{tmp_path / 'two'}")


def test_csv_paths_cannot_leave_the_dataset_root(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _save(Image.new("L", (8, 8), 9), tmp_path / "data" / name)
    _save(Image.new("L", (8, 8), 9), tmp_path / "secret.png")
    table = tmp_path / "data" / "t.csv"
    table.write_text(f"path,label\na.png,x\nb.png,y\nc.png,x\nd.png,y\n../secret.png,x\n{tmp_path / 'secret.png'},y\n")
    ds = load_dataset(f"csv:{table}", val_split=0, test_split=0)
    assert len(ds.train) == 4 and len(ds.skipped) == 2
    assert all("outside the dataset root" in r for r in ds.skipped.values())
    assert len(load_dataset(f"csv:{table}", val_split=0, test_split=0, allow_outside_root=True).train) == 6


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_fails_in_an_unexpected_way_on_arbitrary_bytes(data):
    try:
        out = decode(data, (8, 8), 1)
    except DECODE_ERRORS:
        return
    assert out.shape == (8, 8, 1) and out.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 40), h=st.integers(1, 40), mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"]),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP"]), channels=st.sampled_from([1, 3]),
       cut=st.integers(0, 100))
def test_decoder_on_generated_images(w, h, mode, fmt, channels, cut):
    img = Image.new(mode, (w, h))
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, KeyError, ValueError):
        return  # this format cannot store this mode
    data = buf.getvalue()
    data = data[: max(1, len(data) * cut // 100)] if cut < 100 else data
    try:
        out = decode(data, (12, 10), channels)
    except DECODE_ERRORS:
        assert cut < 100, f"a whole {mode} {fmt} image must decode"
        return
    assert out.shape == (12, 10, channels) and out.dtype == np.uint8


KEYS = ["epochs", "batch_size", "learning_rate", "optimizer", "schedule", "val_split", "seed", "channels", "nope",
        "image_size", "model_options", "class_weight", "monitor"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.integers(-3, 300), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_config_parser_accepts_or_says_why_in_one_line(values):
    try:
        cfg = make_config(**values)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert cfg.epochs > 0 and cfg.batch_size > 0 and 0 <= cfg.val_split < 1


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
def test_set_assignments_parse_or_say_why(text):
    try:
        keys, _ = parse_assignment(text)
    except ConfigError as err:
        assert "KEY=VALUE" in str(err)
        return
    assert keys and all(isinstance(k, str) for k in keys)


def test_a_model_file_that_would_run_code_is_refused(tmp_path, mnist_run):
    import keras

    marker = tmp_path / "pwned"
    inputs = keras.Input((28, 28, 1))
    # a lambda with no closure, so Keras can store its bytecode; running it would create `marker`
    touch = eval(f"lambda x: x * 0 + float(open({str(marker)!r}, 'w').close() or 1)")
    outputs = keras.layers.Lambda(touch)(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(outputs))
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    png = tmp_path / "x.png"
    _save(Image.new("L", (28, 28)), png)
    proc = run_cli("predict", tmp_path / "evil.keras", png, check=False)
    assert proc.returncode == 2 and "cannot load model" in proc.stderr and "lambda" in proc.stderr.lower()
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists(), "nothing from the file ran"
    assert "config.json" in zipfile.ZipFile(tmp_path / "evil.keras").namelist()


def test_divergence_stops_with_a_clear_message_and_keeps_no_bad_model(tmp_path):
    with pytest.raises(ImgtrainError, match=r"loss became (nan|inf) in epoch 1 .* try a lower learning_rate"):
        train(dataset="mnist", model="mlp", epochs=2, train_limit=2000, optimizer="sgd", learning_rate=1e12,
              schedule="constant", out=str(tmp_path / "r"), tensorboard=False, report=False, verbose="quiet")
    assert not (tmp_path / "r" / "best.keras").exists() and not (tmp_path / "r" / "last.keras").exists()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "diverged"


def test_last_checkpoint_skips_a_diverged_epoch(tmp_path):
    from imgtrain.callbacks import LastCheckpoint
    from imgtrain.models import build_model

    cb = LastCheckpoint(tmp_path / "last.keras", {})
    cb.set_model(build_model("mlp"))
    cb.on_epoch_end(0, {"loss": 0.5})
    before = (tmp_path / "last.keras").read_bytes()
    cb.on_epoch_end(1, {"loss": float("nan")})
    assert (tmp_path / "last.keras").read_bytes() == before


def test_bad_run_settings_are_one_line_and_write_nothing(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 4096 is larger than the 450 training images; use at most 450"):
        train(dataset="mnist", model="mlp", train_limit=500, batch_size=4096, out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    proc = run_cli("train", "--dataset", "mnist", "--model", "mlp", "--train-limit", "500", "--epochs", "1",
                   "--out", "/etc/hostname/run", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: cannot write run directory /etc/hostname/run: Not a directory"]


def test_same_seed_gives_identical_weights_and_replay_says_so(tmp_path):
    run_cli("train", "--dataset", "mnist", "--model", "cnn_small", "--epochs", "1", "--train-limit", "2000",
            "--augment", "shift", "--no-report", "--out", tmp_path / "a")
    proc = run_cli("replay", tmp_path / "a")
    assert f"identical: {tmp_path / 'a'}-replay" in proc.stdout
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "a-replay" / "metrics.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"] and a["test_accuracy"] == b["test_accuracy"]
