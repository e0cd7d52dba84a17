"""`imgtrain export`: the model in another runtime's format, checked against Keras on real test images.

Each export writes, beside the model, `<name>.preprocessing.json`: what a user of that file alone needs to feed it
(input shape, layout, pixel range, colour mode, resize method, class names) and the precision it computes in.

A mixed-precision model (the demo and the presets train in mixed_bfloat16) stays mixed in `.keras`; the other formats
get it computing in float32, which every runtime accepts. Each is checked against the same computation in Keras,
and the JSON also says how far a float32 export is from the model as trained (`vs_trained`).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgtrain.core.backend import precision_of
from imgtrain.core.errors import ImgtrainError
from imgtrain.core.saving import atomic_write_json

if TYPE_CHECKING:
    import keras

FORMATS = {"keras": ".keras", "savedmodel": "", "onnx": ".onnx", "tflite": ".tflite"}
TOLERANCE = 1e-4  # max |p_export - p_keras| accepted, p_keras from the same computation (same precision) in Keras


def preprocessing(model: keras.Model, meta: dict[str, Any]) -> dict[str, Any]:
    h, w, c = (int(d) for d in model.input_shape[1:])
    return {
        "input_shape": [None, h, w, c],
        "layout": "NHWC",
        "dtype": "float32",
        "pixel_range": [0, 255],
        "scaling": "none needed: the model divides by 255 itself",
        "color_mode": "grayscale" if c == 1 else "rgb",
        "resize": f"bilinear to {h}x{w} (Pillow, antialiased)",
        "output": "probabilities over class_names (softmax)",
        "class_names": list(meta["class_names"]),
    }


def _runner(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function images -> probabilities in the exported format's own runtime."""
    if fmt == "keras":
        import keras

        model = keras.models.load_model(path, safe_mode=True)
        return lambda x: model.predict(x, verbose=0)
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return lambda x: loaded.serve(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter warns that ai_edge_litert will replace it
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(model_path=str(path))

    def run(x: np.ndarray) -> np.ndarray:
        out = []
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        for img in x:  # the converted graph has a fixed batch of one
            interp.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
            interp.allocate_tensors()
            interp.set_tensor(inp["index"], img[None].astype(np.float32))
            interp.invoke()
            out.append(interp.get_tensor(outp["index"])[0])
        return np.stack(out)

    return run


def check_images(target: str | Path, meta: dict[str, Any], n: int = 256) -> np.ndarray:
    """Up to `n` real test images of the model's dataset, at the model's input size."""
    from imgtrain.data import load_dataset

    name = meta.get("dataset")
    if not name:
        raise ImgtrainError("the model records no dataset to check the export on")
    h, w, c = meta["input_shape"]
    ds = load_dataset(name, val_split=0, image_size=(h, w), channels=c, test_limit=n)
    split = ds.test if ds.test is not None else ds.train
    from imgtrain.data.sample import images_of

    return images_of(split, np.arange(min(n, len(split))), (h, w, c)).astype(np.float32)


def _agreement(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """max |difference| of the probabilities, and the share of images with the same top-1 class."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    if got.shape != want.shape:
        raise ValueError(f"output shape {got.shape}, Keras gives {want.shape}")
    return {
        "max_abs_diff": float(np.abs(got - want).max()),
        "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
    }


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _write(fmt: str, model: keras.Model, src: Path, meta: dict[str, Any], tmp: Path) -> None:
    """The export of `model` at `tmp`: the model file itself for `keras`, else the runtime's format."""
    import keras

    from imgtrain.core.saving import save_model

    if fmt == "keras":
        shutil.copyfile(src, tmp) if src.suffix == ".keras" else save_model(model, tmp, meta)
        return
    # Keras' exporters trace `model(x)` with no training flag, and augmentation layers (RandomFlip, ...) default to
    # training=True: the graph would transform every image at random (a SavedModel giving other answers than Keras,
    # an ONNX file with a random op ONNX Runtime lacks). Calling the model with training=False leaves them out.
    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    serving = keras.Model(inputs, model(inputs, training=False), name=model.name)
    serving(np.zeros((1, *model.input_shape[1:]), np.float32))  # the ONNX exporter needs a model called once
    with warnings.catch_warnings():  # Keras' tf2onnx shim trips NumPy's np.object FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        serving.export(
            str(tmp), format={"savedmodel": "tf_saved_model", "tflite": "litert"}.get(fmt, fmt), verbose=False
        )


def _first_line(err: BaseException) -> str:
    line = next((s for s in str(err).splitlines() if s.strip()), "")
    return f"{type(err).__name__}: {line[:300]}"


def _write_checked(
    fmt: str, model: keras.Model, src: Path, meta: dict[str, Any], path: Path, x: np.ndarray, reference: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    """Write the export beside `path`, run it in its own runtime on `x`, and move it to `path` only if it gives
    `reference` within TOLERANCE; returns the agreement and its outputs. A failure leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    _remove(tmp)
    try:
        _write(fmt, model, src, meta, tmp)
        got = _runner(fmt, tmp)(x)
        check = _agreement(got, reference)
    except Exception as err:  # exporters and runtimes (tf2onnx, ONNX Runtime, LiteRT) raise many types: one line
        _remove(tmp)
        raise ImgtrainError(f"{fmt} export failed: {_first_line(err)}") from err
    except BaseException:  # Ctrl-C: no half-written export either
        _remove(tmp)
        raise
    if check["max_abs_diff"] > TOLERANCE:
        _remove(tmp)
        raise ImgtrainError(
            f"{fmt} export disagrees with Keras: max |difference| {check['max_abs_diff']:.2e} > "
            f"{TOLERANCE:g} on {len(x)} images; nothing written"
        )
    if path.is_dir():  # a file is replaced atomically by the rename; a SavedModel folder has to go first
        shutil.rmtree(path)
    tmp.replace(path)
    return check, got


def export(target: str | Path, fmt: str, out: str | Path | None = None, check: int = 256) -> dict[str, Any]:
    """Export a run's best model (or a model file) to `fmt`; returns paths and the agreement with Keras.

    `keras` is the model file as trained (mixed precision stays mixed), checked against that model. The other
    formats get the model computing in float32, which every runtime accepts, checked against that float32 model in
    Keras; for a mixed-precision model, `vs_trained` also says how far the export is from the model as trained."""
    from imgtrain.core.saving import float32_copy, load_model, resolve_model_path

    if fmt not in FORMATS:
        raise ImgtrainError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    src = resolve_model_path(target)
    trained, meta = load_model(src)
    model = trained if fmt == "keras" else float32_copy(trained)
    out_dir = Path(out) if out else (Path(target) if Path(target).is_dir() else src.parent) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"model{FORMATS[fmt]}" if fmt != "savedmodel" else out_dir / "saved_model"
    x = check_images(target, meta, check) if check else np.zeros((1, *model.input_shape[1:]), np.float32)
    reference = model.predict(x, verbose=0)
    as_trained = trained.predict(x, verbose=0) if model is not trained and check else None
    agreement, got = _write_checked(fmt, model, src, meta, path, x, reference)
    info: dict[str, Any] = {
        "format": fmt,
        "path": str(path),
        "source": str(src),
        "checked_images": int(len(x)) if check else 0,
        **agreement,
        "precision": precision_of(model),
        **preprocessing(model, meta),
    }
    info["trained_precision"] = precision_of(trained)
    if as_trained is not None:  # what the float32 conversion cost, on the same images
        info["vs_trained"] = _agreement(got, as_trained)
    atomic_write_json(out_dir / f"{path.name}.preprocessing.json", info)
    return info
