"""Out-of-fold probabilities: the training images in K stratified, seeded folds, each fold a normal imgtrain run
(config key `fold: K/N`) that trains on the other folds and predicts the one it never saw; the data's own test and
validation images scored by the mean of the K fold models, none of which saw them. A killed audit continues: a
finished fold run is read back, an unfinished one resumes as `imgtrain train` resumes it.

Kept in the audit directory as `oof.npz` (probabilities, labels, shipped positions per split, each training image's
fold) and `embeddings.npz` (the first fold model's penultimate layer for every image), so that a second audit with
other thresholds trains nothing.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.core.errors import ImgtrainError
from imgtrain.core.presets import preset_config

if TYPE_CHECKING:
    import keras

    from imgtrain.data import Dataset
    from imgtrain.data.dataset import Split

# A fast recipe per kind of data, chosen from the images' size; what the user sets wins. Small images: the preset
# mnist-99's model and optimiser (seed 000's CNN, one-cycle) for two epochs and without its label smoothing (sharper
# probabilities for confident learning): 0.98+ held-out accuracy on MNIST. Photos: a pretrained backbone, frozen
# (its features cached), a new head.
_MNIST_99 = preset_config("mnist-99")
RECIPES: dict[str, dict[str, Any]] = {
    "small": {
        **{k: _MNIST_99[k] for k in ("model", "model_options", "batch_size", "learning_rate", "schedule")},
        "epochs": 2,
    },
    "photo": dict(model="mobilenet_v3_small", epochs=3, freeze_epochs=3),
}
SMALL_SIDE = 64  # pixels: images up to this side train a small CNN from scratch
# every fold run: no report or TensorBoard (the audit has its own page), quiet; the whole training split is folded
FOLD_RUN = dict(val_split=0.0, monitor="loss", report=False, tensorboard=False, verbose="quiet")
FIXED = ("dataset", "fold", "out", "test_split")  # set by the audit for every fold run


def recipe_for(ds: Dataset, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(kind, config values of the fold runs): the kind's recipe, then FOLD_RUN, then what the user gave. A model
    the user names (or a preset's) comes with imgtrain's usual defaults instead of the kind's recipe, which is
    tuned for its own model (a frozen backbone's freeze_epochs would not suit a CNN from scratch)."""
    fixed = [k for k in FIXED if k in given]
    if fixed:
        raise ImgtrainError(f"audit sets {', '.join(fixed)} itself for each fold run; leave {fixed[0]} out")
    kind = "small" if max(ds.input_shape[:2]) <= SMALL_SIDE else "photo"
    if "model" in given:
        return "given", {**FOLD_RUN, **given}
    return kind, {**RECIPES[kind], **FOLD_RUN, **given}


def fold_dir(out: Path, k: int, n: int) -> Path:
    return out / "folds" / f"{k}-of-{n}"


def train_folds(
    values: dict[str, Any], dataset: str, out: Path, folds: int, log: Callable[[str], object]
) -> list[Path]:
    """Run (or read back, or resume) the `folds` fold runs; their directories."""
    from imgtrain.training.rundir import FINISHED

    dirs = []
    for k in range(1, folds + 1):
        run_dir = fold_dir(out, k, folds)
        state = run_dir / "run.json"
        if state.is_file() and json.loads(state.read_text()).get("status") in FINISHED:
            log(f"fold {k}/{folds}: done earlier ({run_dir})")
        else:
            t0 = time.perf_counter()
            config = {**values, "dataset": dataset, "test_split": 0.0, "fold": f"{k}/{folds}", "out": str(run_dir)}
            metrics = _in_child(config, out) if _child_can_run(config) else _in_process(config)
            log(
                f"fold {k}/{folds}: held-out accuracy {metrics['test_accuracy']:.4f} on "
                f"{metrics['test_images']:,} images, {time.perf_counter() - t0:.1f} s"
            )
        dirs.append(run_dir)
    return dirs


def _child_can_run(config: dict[str, Any]) -> bool:
    """Whether a fresh `imgtrain train` process can run this fold: plain config values and a dataset it can load
    (not one registered from the caller's Python, nor a model built there)."""
    from imgtrain.data import DATASETS, parse_name

    try:
        json.dumps(config)
    except TypeError:
        return False
    return bool(DATASETS.get(parse_name(config["dataset"])[0]).__module__.startswith("imgtrain."))


def _in_child(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """The fold as `imgtrain train --config FILE` in its own process: the audit then peaks where one training run
    does (in one process, memory that TensorFlow keeps from each fold added up: 10,000 photos, 1,773 MiB to train,
    2,190 MiB to audit)."""
    import os
    import subprocess
    import sys

    from imgtrain.core.config import make_config, save_config
    from imgtrain.core.saving import atomic_write

    path = out / "folds" / f"{Path(config['out']).name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save_config(make_config(**config)))
    cmd = [sys.executable, "-c", "from imgtrain.cli import main; main()", "train", "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ImgtrainError(f"fold run {config['fold']} failed: {last[0].removeprefix('error: ')}")
    metrics: dict[str, Any] = json.loads((Path(config["out"]) / "metrics.json").read_text())
    return metrics


def _in_process(config: dict[str, Any]) -> dict[str, Any]:
    from imgtrain.training.run import train

    release()
    metrics: dict[str, Any] = train(config).metrics  # only the metrics kept: the model goes with the next release()
    return metrics


def release() -> None:
    """Drop the models and graphs of the earlier fold (Keras' global state, cycles the collector has not reached):
    the audit then peaks where one fold's training does, not at the sum of all of them."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def embedding_model(model: keras.Model) -> keras.Model:
    """The model up to its penultimate layer: the input of its last Dense layer (the classifier's features)."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ImgtrainError(f"model {model.name} has no Dense layer whose input could serve as embeddings")
    return keras.Model(model.inputs, dense[-1].input, name=f"{model.name}_embeddings")


def _rows(model: keras.Model, split: Split, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, row indices that decoded) of `model` over `split`."""
    from imgtrain.analysis.evaluate import predict_probs

    out, _, rows = predict_probs(model, split, batch)
    return out.astype(np.float32), rows


def collect(ds: Dataset, dirs: list[Path], seed: int, batch: int = 512) -> tuple[dict[str, Any], dict[str, Any]]:
    """(oof arrays, embedding arrays) from the finished fold runs over `ds` (loaded as the runs load it, unfolded)."""
    import logging

    tf_log = logging.getLogger("tensorflow")  # its retracing warnings: each model meets a few batch shapes
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        return _collect(ds, dirs, seed, batch)
    finally:
        tf_log.setLevel(level)


def _collect(ds: Dataset, dirs: list[Path], seed: int, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    from imgtrain.analysis.evaluate import PREDICTIONS
    from imgtrain.core.saving import load_model
    from imgtrain.data.split import fold_of_each

    n, train = len(dirs), ds.train
    which = fold_of_each(train.y, n, seed)
    oof = np.full((len(train), ds.num_classes), np.nan, np.float32)
    others = {name: s for name, s in (("val", ds.val), ("test", ds.test)) if s is not None and len(s)}
    sums: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    emb: dict[str, Any] = {}
    for k, run_dir in enumerate(dirs):
        release()
        with np.load(run_dir / PREDICTIONS) as saved:
            oof[np.flatnonzero(which == k)[saved["positions"]]] = saved["probs"]
        model, _ = load_model(run_dir)
        for name, split in others.items():
            probs, rows = _rows(model, split, batch)
            sums[name] = sums.get(name, 0) + probs
            kept[name] = rows
        if k == 0:  # one model's embedding space for every image, so that train and test compare
            features = embedding_model(model)
            for name, split in {"train": train, **others}.items():
                vectors, rows = _rows(features, split, batch)
                emb[f"{name}_embeddings"], emb[f"{name}_rows"] = vectors.astype(np.float16), rows
            del features
        del model  # released before the next fold's is loaded
    ok = ~np.isnan(oof).any(axis=1)  # a streamed file that did not decode has no probabilities
    arrays: dict[str, Any] = {"class_names": np.array(ds.class_names), "train_fold": which[ok]}
    arrays.update(_split_arrays("train", oof[ok], train, np.flatnonzero(ok)))
    for name, split in others.items():
        arrays.update(_split_arrays(name, sums[name] / n, split, kept[name]))
    return arrays, emb


def _split_arrays(name: str, probs: np.ndarray, split: Split, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {
        f"{name}_probs": probs.astype(np.float32),
        f"{name}_y": split.y[rows],
        f"{name}_rows": rows,  # rows of the split as loaded (paths: split.paths[rows])
        f"{name}_positions": split.positions[rows],  # positions in the split as the dataset ships it
    }


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    from imgtrain.core.saving import atomic_write

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: cast(np.ndarray, z[k]) for k in z.files}
