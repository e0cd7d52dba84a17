import json

import numpy as np
import pytest
from conftest import run_cli

from imgtrain.core.backend import precision_of
from imgtrain.core.saving import float32_copy
from imgtrain.ship.export import FORMATS, export


def _mnist_test_pngs_decoded(n=64):
    """Real MNIST test images as a user of the ONNX file alone would prepare them: uint8 -> float32, NHWC."""
    from imgtrain import load_dataset

    ds = load_dataset("mnist", val_split=0)
    return ds.test.x[:n].astype(np.float32), ds.test.y[:n]


def test_onnx_runs_in_onnxruntime_like_keras(mnist_run, tmp_path):
    import keras
    import onnxruntime as ort

    out, _ = mnist_run
    proc = run_cli("export", out, "--format", "onnx", "--out", tmp_path)
    assert "top-1 agreement 1.0000" in proc.stdout
    prep = json.loads((tmp_path / "model.onnx.preprocessing.json").read_text())
    assert prep["input_shape"] == [None, 28, 28, 1] and prep["pixel_range"] == [0, 255]
    assert prep["class_names"] == [str(i) for i in range(10)] and prep["max_abs_diff"] <= 1e-4
    x, y = _mnist_test_pngs_decoded()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    # the ONNX file computes in float32 (precision auto may have trained in mixed_bfloat16): it matches the float32
    # copy of best.keras to 1e-4, and the model as trained on the top class
    trained = keras.models.load_model(out / "best.keras")
    want = float32_copy(trained).predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-4
    assert prep["trained_precision"] == precision_of(trained)
    assert (got.argmax(1) == trained.predict(x, verbose=0).argmax(1)).mean() >= 0.98
    assert (got.argmax(1) == y).mean() >= 0.95


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "onnx"])
def test_every_format_is_checked_against_keras(fmt, mnist_run, tmp_path):
    out, _ = mnist_run
    info = export(out, fmt, tmp_path, check=32)
    assert info["checked_images"] == 32 and info["max_abs_diff"] <= 1e-4 and info["top1_agreement"] == 1.0
    assert (tmp_path / ("saved_model" if fmt == "savedmodel" else f"model{FORMATS[fmt]}")).exists()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left"


def test_unknown_format_is_one_line(mnist_run):
    out, _ = mnist_run
    proc = run_cli("export", out, "--format", "caffe", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown export format 'caffe'; valid: keras, savedmodel, onnx, tflite"
