"""`imgtrain export`: the model in another runtime's format, checked against Keras on real test images.

Each export writes, beside the model, `<name>.preprocessing.json`: what a user of that file alone needs to feed it
(input shape, layout, pixel range, colour mode, resize method, class names).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import ImgtrainError
from .saving import atomic_write_json

FORMATS = {"keras": ".keras", "savedmodel": "", "onnx": ".onnx", "tflite": ".tflite"}
TOLERANCE = 1e-4  # max |p_export - p_keras| accepted for float32 exports


def preprocessing(model, meta: dict) -> dict:
    h, w, c = (int(d) for d in model.input_shape[1:])
    return {
        "input_shape": [None, h, w, c], "layout": "NHWC", "dtype": "float32",
        "pixel_range": [0, 255], "scaling": "none needed: the model divides by 255 itself",
        "color_mode": "grayscale" if c == 1 else "rgb", "resize": f"bilinear to {h}x{w} (Pillow, antialiased)",
        "output": "probabilities over class_names (softmax)", "class_names": list(meta["class_names"]),
    }


def _runner(fmt: str, path: Path):
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

    def run(x):
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


def check_images(target, meta: dict, n: int = 256) -> np.ndarray:
    """Up to `n` real test images of the model's dataset, at the model's input size."""
    from .data import load_dataset

    name = meta.get("dataset")
    if not name:
        raise ImgtrainError("the model records no dataset to check the export on")
    h, w, c = meta["input_shape"]
    ds = load_dataset(name, val_split=0, image_size=(h, w), channels=c, test_limit=n)
    split = ds.test if ds.test is not None else ds.train
    from .report import images_of

    return images_of(split, np.arange(min(n, len(split))), (h, w, c)).astype(np.float32)


def export(target: str | Path, fmt: str, out: str | Path | None = None, check: int = 256) -> dict:
    """Export a run's best model (or a model file) to `fmt`; returns paths and the agreement with Keras."""
    from .saving import float32_copy, load_model, resolve_model_path

    if fmt not in FORMATS:
        raise ImgtrainError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    src = resolve_model_path(target)
    model, meta = load_model(src)
    model = float32_copy(model)
    out_dir = Path(out) if out else (Path(target) if Path(target).is_dir() else src.parent) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"model{FORMATS[fmt]}" if fmt != "savedmodel" else out_dir / "saved_model"
    x = check_images(target, meta, check) if check else np.zeros((1, *model.input_shape[1:]), np.float32)
    reference = model.predict(x, verbose=0)  # also builds the graph, which the ONNX exporter needs
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if fmt == "keras":
        shutil.copyfile(src, tmp)
    else:
        with warnings.catch_warnings():  # Keras' tf2onnx shim trips NumPy's np.object FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(tmp), format={"savedmodel": "tf_saved_model", "tflite": "litert"}.get(fmt, fmt),
                         verbose=False)
    got = _runner(fmt, tmp)(x)
    diff = float(np.abs(got - reference).max())
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    if diff > TOLERANCE:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise ImgtrainError(f"{fmt} export disagrees with Keras: max |difference| {diff:.2e} > {TOLERANCE:g} "
                            f"on {len(x)} images; nothing written")
    if path.is_dir():
        shutil.rmtree(path)
    tmp.replace(path)
    info = {"format": fmt, "path": str(path), "source": str(src), "checked_images": int(len(x)) if check else 0,
            "max_abs_diff": diff, "top1_agreement": agree, **preprocessing(model, meta)}
    atomic_write_json(out_dir / f"{path.name}.preprocessing.json", info)
    return info
