"""Exports of a mixed_bfloat16 run: the demo recipe (configs/demo.yaml: resnet9, flips, label smoothing, AdamW) at a
small size, exported to every format and checked like with like: `.keras` against the model as trained, the float32
formats against the float32 model in Keras, each reloaded here in its own runtime."""

import json
import warnings

import numpy as np
import pytest
from conftest import ROOT, needs_bf16, run_cli

from imgtrain.core.errors import ImgtrainError
from imgtrain.ship.export import FORMATS, check_images, export

CHECK = 64  # test images each export is checked on
pytestmark = needs_bf16  # the demo recipe's precision auto picks bfloat16 only where oneDNN can compute it


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo recipe, 1 epoch on 1,000 Fashion-MNIST images (about 15 s on 2 cores), trained as a user would."""
    out = tmp_path_factory.mktemp("runs") / "demo-bf16"
    run_cli(
        "train",
        "--config",
        ROOT / "configs" / "demo.yaml",
        "--epochs",
        "1",
        "--train-limit",
        "1000",
        "--set",
        "test_limit=200",
        "--set",
        "tensorboard=false",
        "--no-report",
        "--out",
        out,
    )
    return out


def _run_in_own_runtime(fmt, path, x):
    """Probabilities from the exported file, read by its runtime alone (no imgtrain)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    import tensorflow as tf

    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(path))
        return loaded.serve(tf.constant(x)).numpy()
    if fmt == "tflite":
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that ai_edge_litert will replace it
            warnings.simplefilter("ignore")
            interp = tf.lite.Interpreter(model_path=str(path))
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        rows = []
        for img in x:
            interp.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
            interp.allocate_tensors()
            interp.set_tensor(inp["index"], img[None])
            interp.invoke()
            rows.append(interp.get_tensor(outp["index"])[0])
        return np.stack(rows)
    import keras

    return keras.models.load_model(path).predict(x, verbose=0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_bfloat16_run_exports_to_every_format(fmt, demo_run, tmp_path):
    from imgtrain.core.saving import float32_copy, load_model

    info = export(demo_run, fmt, tmp_path, check=CHECK)
    path = tmp_path / ("saved_model" if fmt == "savedmodel" else f"model{FORMATS[fmt]}")
    prep = json.loads((tmp_path / f"{path.name}.preprocessing.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f"{path.name}.preprocessing.json"])

    trained, meta = load_model(demo_run)
    x = check_images(demo_run, meta, CHECK)
    got = _run_in_own_runtime(fmt, path, x)
    as_trained = trained.predict(x, verbose=0)
    if fmt == "keras":  # the run's model as trained, same runtime: the very same numbers
        assert prep["precision"] == "mixed_bfloat16" and "vs_trained" not in prep
        assert prep["max_abs_diff"] == 0.0 and np.array_equal(got, as_trained)
    else:  # a float32 graph, checked against the float32 model in Keras; and what that cost against bfloat16
        assert prep["precision"] == "float32" and prep["trained_precision"] == "mixed_bfloat16"
        like = float32_copy(trained).predict(x, verbose=0)
        assert np.abs(got - like).max() == pytest.approx(prep["max_abs_diff"], abs=1e-6)
        vs = prep["vs_trained"]
        assert np.abs(got - as_trained).max() == pytest.approx(vs["max_abs_diff"], abs=1e-6)
        assert vs["top1_agreement"] == pytest.approx((got.argmax(1) == as_trained.argmax(1)).mean())
        assert 0 < vs["max_abs_diff"] < 0.1 and vs["top1_agreement"] >= 0.9
    assert prep["checked_images"] == CHECK and prep["max_abs_diff"] <= 1e-4 and prep["top1_agreement"] == 1.0
    assert info["precision"] == prep["precision"] and prep["dtype"] == "float32"  # the input stays float32


def test_onnx_graph_has_no_bfloat16_and_no_augmentation(demo_run, tmp_path):
    import onnx

    export(demo_run, "onnx", tmp_path, check=8)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert not [n.op_type for n in graph.node if "Random" in n.op_type], "flips belong to training only"
    types = {t.type.tensor_type.elem_type for t in [*graph.input, *graph.output, *graph.value_info]}
    types |= {t.data_type for t in graph.initializer}
    assert onnx.TensorProto.BFLOAT16 not in types


def test_runtime_failure_is_one_line_and_leaves_nothing(demo_run, tmp_path, monkeypatch):
    import imgtrain.ship.export as exporting

    def broken(fmt, path):  # what ONNX Runtime raised for the bfloat16 demo model before the fix
        raise RuntimeError(
            "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from x.onnx failed:This is an "
            "invalid model.\n  detail on a second line"
        )

    monkeypatch.setattr(exporting, "_runner", broken)
    with pytest.raises(ImgtrainError) as err:
        export(demo_run, "onnx", tmp_path, check=8)
    assert str(err.value) == (
        "onnx export failed: RuntimeError: [ONNXRuntimeError] : 10 : INVALID_GRAPH : Load "
        "model from x.onnx failed:This is an invalid model."
    )
    assert isinstance(err.value.__cause__, RuntimeError)  # a library caller keeps the cause; the CLI prints one line
    assert list(tmp_path.iterdir()) == [], "no half-written export"
