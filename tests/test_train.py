import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run_cli

from imgtrain import load_dataset, train

RUN_FILES = [
    "config.yaml",
    "run.json",
    "history.csv",
    "train.log",
    "best.keras",
    "last.keras",
    "best.weights.h5",
    "metrics.json",
]


@pytest.mark.accuracy
def test_cnn_small_on_mnist_one_epoch(mnist_run):
    out, proc = mnist_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.985, metrics["test_accuracy"]
    assert metrics["test_images"] == 10000
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in proc.stdout
    assert f"run directory: {out}" in proc.stdout


def test_run_directory_holds_everything_to_replay(mnist_run):
    out, _ = mnist_run
    for name in RUN_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "TensorBoard logs"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done"
    assert info["versions"]["backend"] == "tensorflow" and info["versions"]["keras"].startswith("3.")
    assert info["data"]["hash"] == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
    assert info["data"]["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 1 and {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.keras")), "no temporary files left behind"


@pytest.mark.accuracy
def test_cnn_bn_on_fashion_mnist_two_epochs(tmp_path):
    # seed 004's architecture; its 0.5/0.2 dropouts learn too slowly for two epochs, so lighter ones. Half the
    # training set (27,000 images after the validation split) keeps make test short: measured 0.8734 (all 54,000:
    # 0.88+)
    run = train(
        dataset="fashion_mnist",
        model="cnn_bn",
        epochs=2,
        batch_size=64,
        learning_rate=3e-3,
        train_limit=30000,
        model_options={"dropout": 0.1, "conv_dropout": 0.0},
        out=str(tmp_path / "run"),
        tensorboard=False,
    )
    assert run.metrics["test_accuracy"] >= 0.86, run.metrics["test_accuracy"]
    assert len(run.history["val_accuracy"]) == 2


def test_saved_models_reload_in_plain_keras_with_the_same_predictions(tmp_path):
    run = train(
        dataset="mnist",
        model="cnn3",
        epochs=1,
        train_limit=2000,
        test_limit=500,
        save_h5=True,
        out=str(tmp_path / "run"),
        tensorboard=False,
    )
    x = load_dataset("mnist", test_limit=300).test.x
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", run.model.predict(x, verbose=0))
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        assert "imgtrain" not in sys.modules
        x, expected = np.load("{tmp_path}/x.npy"), np.load("{tmp_path}/expected.npy")
        diffs = []
        for name in ("best.keras", "best.h5"):
            model = keras.models.load_model("{tmp_path}/run/" + name)
            diffs.append(float(np.abs(model.predict(x, verbose=0) - expected).max()))
        model.load_weights("{tmp_path}/run/best.weights.h5")  # weights only, into the same architecture
        diffs.append(float(np.abs(model.predict(x, verbose=0) - expected).max()))
        print(diffs)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    diffs = eval(proc.stdout.strip().splitlines()[-1])
    assert len(diffs) == 3 and max(diffs) <= 1e-6, diffs


@pytest.mark.accuracy
@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_file_datasets_train_and_evaluate(kind, fashion_files, tmp_path):
    spec = f"{kind}:{fashion_files[kind]}"
    out = tmp_path / kind
    run_cli("train", "--dataset", spec, "--model", "cnn_small", "--epochs", "4", "--lr", "3e-3", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 1000
    assert metrics["test_accuracy"] >= 0.75, metrics["test_accuracy"]
    proc = run_cli("evaluate", out, "--dataset", spec)
    result = json.loads((out / "evaluation-test.json").read_text())
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert "Ankle boot" in proc.stdout and "precision" in proc.stdout


def test_streamed_folder_trains_and_scores_with_flip_tta(fashion_files, tmp_path):
    from imgtrain.analysis.evaluate import predict_probs

    spec = f"folder:{fashion_files['folder']}"
    run = train(
        dataset=spec,
        model="mlp",
        epochs=1,
        stream=True,
        tta="flip",
        out=str(tmp_path / "run"),
        tensorboard=False,
        verbose="quiet",
    )
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["data"]["streamed"] is True
    assert run.metrics["test_images"] == 1000 and run.metrics["test_accuracy"] > 0.5
    assert run.metrics["test_tta"] == "flip"
    saved = np.load(run.run_dir / "predictions-test.npz")["probs"]
    test = load_dataset(spec, stream=True).test
    np.testing.assert_allclose(predict_probs(run.model, test, tta="flip")[0], saved, atol=1e-5)
    assert np.abs(predict_probs(run.model, test)[0] - saved).max() > 1e-3  # the saved scores are the TTA ones


def test_history_logs_the_rate_each_epoch_trained_with(tmp_path):
    """learning_rate is the rate of the epoch's first step, learning_rate_end that of its last: a step decay shows
    each epoch's own rate (not the next epoch's), a one-cycle run its warm-up start and its annealed end."""
    kw = dict(
        dataset="mnist", model="mlp", train_limit=2000, batch_size=128, tensorboard=False, report=False, verbose="quiet"
    )
    step = train(
        epochs=3, schedule="step", step_epochs=1, step_gamma=0.1, learning_rate=0.01, out=str(tmp_path / "step"), **kw
    ).history
    assert step["learning_rate"] == pytest.approx([0.01, 0.001, 0.0001], rel=1e-5)
    assert step["learning_rate_end"] == pytest.approx([0.01, 0.001, 0.0001], rel=1e-5)
    # 1,800 training images, batch 128: 15 steps an epoch, 60 in all, the first 15 (25 %) warming up
    cycle = train(epochs=4, learning_rate=0.01, out=str(tmp_path / "cycle"), **kw).history
    assert cycle["learning_rate"][0] == pytest.approx(0.01 / 25, rel=1e-5)  # onecycle starts at peak / 25
    assert cycle["learning_rate_end"][0] == pytest.approx(0.0004 + (0.01 - 0.0004) * 14 / 15, rel=1e-5)
    assert cycle["learning_rate"][1] == pytest.approx(0.01, rel=1e-5)  # the peak, right after the warm-up
    assert cycle["learning_rate"][1] > cycle["learning_rate"][2] > cycle["learning_rate"][3]
    assert cycle["learning_rate_end"][3] < 2e-5  # annealed towards peak * 1e-4 at the very last step
    rows = list(csv.DictReader(open(tmp_path / "cycle" / "history.csv")))
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.0004, rel=1e-5)


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path):
    run = train(
        dataset="mnist",
        model="mlp",
        epochs=6,
        train_limit=1000,
        schedule="constant",
        learning_rate=1e-9,
        early_stopping=1,
        out=str(tmp_path / "r"),
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    assert run.metrics["epochs_run"] == 2, "no improvement at a learning rate of 1e-9 stops after the patience"


def test_balanced_and_named_class_weights_are_exact():
    from types import SimpleNamespace

    from imgtrain.training.fit import class_weights

    # 6 cats, 3 dogs, 1 eel: balanced weight n / (classes * count) = 10/18, 10/9, 10/3
    ds = SimpleNamespace(
        train=SimpleNamespace(y=np.array([0] * 6 + [1] * 3 + [2])), class_names=["cat", "dog", "eel"], num_classes=3
    )
    assert class_weights("balanced", ds) == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3}, rel=1e-12)
    assert class_weights({"dog": 4.0, "2": 0.5}, ds) == {0: 1.0, 1: 4.0, 2: 0.5}  # by name or index; others 1
    assert class_weights("none", ds) is None


@pytest.fixture(scope="module")
def weighted_runs(tmp_path_factory):
    """mlp, one epoch on 2,000 MNIST images: without class weights, and with weight 30 on class 3, once with integer
    labels and once with one-hot labels and label smoothing 0.1 (the other loss path)."""
    base = tmp_path_factory.mktemp("weighted")
    kw = dict(
        dataset="mnist",
        model="mlp",
        epochs=1,
        train_limit=2000,
        batch_size=128,
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    return {
        (smoothing, weighted): train(
            label_smoothing=smoothing,
            class_weight={"3": 30.0} if weighted else "none",
            out=str(base / f"{smoothing}-{weighted}"),
            **kw,
        )
        for smoothing, weighted in ((0.0, False), (0.0, True), (0.1, True))
    }


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_heavy_class_weight_makes_the_model_predict_that_class(weighted_runs, smoothing):
    from imgtrain.analysis.evaluate import predict_arrays

    test = load_dataset("mnist", val_split=0, test_limit=2000).test
    threes = {
        weighted: int((predict_arrays(weighted_runs[key].model, test.x).argmax(1) == 3).sum())
        for weighted, key in ((False, (0.0, False)), (True, (smoothing, True)))
    }
    # measured: 270 of 2,000 without weights (202 are threes), 1,999 (1,998 with smoothing) with weight 30
    assert threes[False] < 400 and threes[True] > 1500, threes


def test_label_smoothing_is_the_loss_the_model_trained_with(weighted_runs):
    """On a known prediction, the compiled loss is the cross-entropy against (1 - eps) * one-hot + eps / classes."""
    p = np.full((1, 10), 0.05, np.float32)
    p[0, 0] = 0.55
    target = np.full(10, 0.1 / 10)
    target[0] += 0.9
    smoothed = weighted_runs[(0.1, True)].model.loss(np.eye(10, dtype=np.float32)[[0]], p)
    assert float(smoothed) == pytest.approx(-(target * np.log(p[0])).sum(), rel=1e-5)  # 0.8136
    plain = weighted_runs[(0.0, True)].model.loss(np.array([0]), p)
    assert float(plain) == pytest.approx(-np.log(0.55), rel=1e-5)  # 0.5978


def test_existing_run_is_never_overwritten(mnist_run):
    out, _ = mnist_run
    before = (out / "best.keras").read_bytes()
    proc = run_cli("train", "--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--out", out, check=False)
    assert proc.returncode == 2 and "already holds a finished run" in proc.stderr
    assert (out / "best.keras").read_bytes() == before


def test_plateau_halves_the_learning_rate_and_explicit_class_weights(tmp_path):
    run = train(
        dataset="mnist",
        model="mlp",
        epochs=3,
        train_limit=1000,
        schedule="constant",
        learning_rate=1e-9,
        reduce_lr_patience=1,
        reduce_lr_factor=0.5,
        min_lr=0.0,
        class_weight={"0": 2.0, "7": 0.5},
        model_options={"dropout": 0.0},
        out=str(tmp_path / "r"),
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    # At 1e-9 the weights stay where they started, and without dropout the epoch's training loss is the mean over
    # the 900 training images of weight(class) * cross-entropy: 2.3897 here, where unweighted it would be 2.3552.
    from imgtrain.analysis.evaluate import predict_arrays

    train_split = load_dataset("mnist", train_limit=1000).train  # the run's split: val_split 0.1, seed 0
    p = predict_arrays(run.model, train_split.x)[np.arange(len(train_split)), train_split.y]
    weight = np.select([train_split.y == 0, train_split.y == 7], [2.0, 0.5], 1.0)
    assert run.history["loss"][0] == pytest.approx(np.mean(weight * -np.log(p)), rel=1e-5)
    lr = run.history["learning_rate"]  # the rate each epoch trained with: cut after epoch 2 (no gain for 1 epoch)
    assert lr == pytest.approx([1e-9, 1e-9, 5e-10], rel=1e-3)


def test_class_weight_names_must_be_classes(tmp_path):
    from imgtrain.core.errors import ConfigError

    with pytest.raises(ConfigError, match="class_weight key 'cat' is not a class; classes: 0, 1, 2"):
        train(
            dataset="mnist",
            model="mlp",
            epochs=1,
            train_limit=500,
            class_weight={"cat": 2.0},
            out=str(tmp_path / "r"),
            tensorboard=False,
            report=False,
            verbose="quiet",
        )
    assert not (tmp_path / "r").exists(), "refused before anything was written"


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_of_a_slower_body_scales_with_the_bodys_rate(optimizer):
    """Decoupled weight decay shrinks each weight by rate x decay a step. With a zero gradient (no Adam or SGD
    step, only the decay), one step leaves the head at w (1 - lr wd) and a body at backbone_lr_mult = 0.1 at
    w (1 - 0.1 lr wd): exact up to float32 rounding of one multiply."""
    import keras

    from imgtrain.core.config import make_config
    from imgtrain.models import HEAD
    from imgtrain.training.schedules import make_optimizer

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name=HEAD)(keras.layers.Dense(5, name="body")(inputs)))
    cfg = make_config(
        dataset="mnist", optimizer=optimizer, weight_decay=0.5, learning_rate=0.1, schedule="constant", batch_size=32
    )
    opt = make_optimizer(cfg, 10, body_mult=0.1)
    before = [np.array(v) for v in model.trainable_variables]
    opt.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    for v, w in zip(model.trainable_variables, before, strict=True):
        shrink = 1 - 0.1 * 0.5 * (1.0 if v.path.startswith(f"{HEAD}/") else 0.1)
        np.testing.assert_allclose(np.array(v), w * np.float32(shrink), rtol=2e-7, err_msg=v.path)


def test_a_second_run_in_one_process_counts_its_startup_from_its_own_train_call(tmp_path):
    """The first run of a process counts its imports (from the process's start); a later one starts at train()."""
    import time

    small = dict(dataset="mnist", model="mlp", epochs=1, train_limit=300, test_limit=100, report=False)
    train(**small, tensorboard=False, out=str(tmp_path / "a"))
    t0 = time.perf_counter()
    second = train(**small, tensorboard=False, out=str(tmp_path / "b"))
    wall = time.perf_counter() - t0
    t = json.loads((tmp_path / "b" / "run.json").read_text())["timings"]
    assert t["setup_s"] <= t["startup_s"] < wall, (t, wall)
    assert second.metrics["test_accuracy"] > 0.3
