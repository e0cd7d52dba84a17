import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import run_cli
from imgtrain import load_dataset, train

RUN_FILES = ["config.yaml", "run.json", "history.csv", "train.log", "best.keras", "last.keras", "best.weights.h5",
             "metrics.json"]


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
    # seed 004's architecture; its 0.5/0.2 dropouts learn too slowly for two epochs (0.865 here), so lighter ones
    run = train(dataset="fashion_mnist", model="cnn_bn", epochs=2, batch_size=64, learning_rate=3e-3,
                model_options={"dropout": 0.1, "conv_dropout": 0.0}, out=str(tmp_path / "run"), tensorboard=False)
    assert run.metrics["test_accuracy"] >= 0.88, run.metrics["test_accuracy"]
    assert len(run.history["val_accuracy"]) == 2


def test_saved_models_reload_in_plain_keras_with_the_same_predictions(tmp_path):
    run = train(dataset="mnist", model="cnn3", epochs=1, train_limit=2000, test_limit=500, save_h5=True,
                out=str(tmp_path / "run"), tensorboard=False)
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
    from imgtrain.evaluate import predict_probs

    spec = f"folder:{fashion_files['folder']}"
    run = train(dataset=spec, model="mlp", epochs=1, stream=True, tta="flip", out=str(tmp_path / "run"),
                tensorboard=False, verbose="quiet")
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["data"]["streamed"] is True
    assert run.metrics["test_images"] == 1000 and run.metrics["test_accuracy"] > 0.5
    assert run.metrics["test_tta"] == "flip"
    saved = np.load(run.run_dir / "predictions-test.npz")["probs"]
    test = load_dataset(spec, stream=True).test
    np.testing.assert_allclose(predict_probs(run.model, test, tta="flip")[0], saved, atol=1e-5)
    assert np.abs(predict_probs(run.model, test)[0] - saved).max() > 1e-3  # the saved scores are the TTA ones


def test_onecycle_warms_up_then_anneals(tmp_path):
    run = train(dataset="mnist", model="mlp", epochs=4, train_limit=2000, learning_rate=0.01, out=str(tmp_path / "r"),
                tensorboard=False, verbose="quiet")
    lr = run.history["learning_rate"]
    assert lr[0] > 0.01 / 25 and lr[0] <= 0.01 + 1e-9  # end of epoch 1 lies in the warm-up
    assert lr[1] > lr[2] > lr[3] and lr[3] < 1e-5


def test_early_stopping_class_weights_and_label_smoothing(tmp_path):
    run = train(dataset="mnist", model="mlp", epochs=6, train_limit=1000, schedule="constant", learning_rate=1e-9,
                early_stopping=1, class_weight="balanced", label_smoothing=0.1, out=str(tmp_path / "r"),
                tensorboard=False, verbose="quiet")
    assert run.metrics["epochs_run"] == 2, "no improvement at a learning rate of 1e-9 stops after the patience"


def test_existing_run_is_never_overwritten(mnist_run):
    out, _ = mnist_run
    before = (out / "best.keras").read_bytes()
    proc = run_cli("train", "--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--out", out, check=False)
    assert proc.returncode == 2 and "already holds a finished run" in proc.stderr
    assert (out / "best.keras").read_bytes() == before


def test_plateau_halves_the_learning_rate_and_explicit_class_weights(tmp_path):
    run = train(dataset="mnist", model="mlp", epochs=3, train_limit=1000, schedule="constant", learning_rate=1e-9,
                reduce_lr_patience=1, reduce_lr_factor=0.5, min_lr=0.0, class_weight={"0": 2.0, "7": 0.5},
                out=str(tmp_path / "r"), tensorboard=False, report=False, verbose="quiet")
    lr = run.history["learning_rate"]  # logged before the plateau callback acts at the end of an epoch
    assert lr[0] == pytest.approx(1e-9) and lr[2] == pytest.approx(5e-10, rel=1e-3)


def test_class_weight_names_must_be_classes(tmp_path):
    from imgtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="class_weight key 'cat' is not a class; classes: 0, 1, 2"):
        train(dataset="mnist", model="mlp", epochs=1, train_limit=500, class_weight={"cat": 2.0},
              out=str(tmp_path / "r"), tensorboard=False, report=False, verbose="quiet")
    assert not (tmp_path / "r").exists(), "refused before anything was written"
