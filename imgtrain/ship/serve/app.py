"""The prediction server: FastAPI on uvicorn.

POST /predict (multipart, field `files`, one or more images) -> top-k classes per image; POST /explain (the same
upload, the same limits) -> top-k and a heatmap per image; GET /health; GET /model; GET / (the upload page);
the Open Inference Protocol (KServe v2) under /v2 for standard clients (v2.py); OpenAPI docs at /docs. Bad uploads get a
JSON error with a 4xx status, never a 500.
Upload limits hold while the body streams in (limits.py for the whole body, upload.py for each file).
"""

from __future__ import annotations

import base64
import html
import io
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from imgtrain.data.images import DECODE_ERRORS, ImageTooLarge, decode
from imgtrain.ship.serve.batcher import Batcher
from imgtrain.ship.serve.limits import BodyLimit
from imgtrain.ship.serve.page import PAGE
from imgtrain.ship.serve.upload import read_files
from imgtrain.ship.serve.v2 import add_v2

if TYPE_CHECKING:
    import keras

    from imgtrain.analysis.heatmaps import Explainer, Explanation


def _image(data: bytes | bytearray, name: str, shape: tuple[int, int, int], max_pixels: int) -> np.ndarray:
    """One decode: the pixel limit is checked from the header before any pixel is decoded."""
    try:
        return decode(data, shape[:2], shape[2], max_pixels=max_pixels)
    except (ImageTooLarge, Image.DecompressionBombError) as err:
        raise HTTPException(413, f"{name}: {err}") from err
    except UnidentifiedImageError as err:
        raise HTTPException(415, f"{name}: not an image this server can read ({type(err).__name__})") from err
    except DECODE_ERRORS as err:
        raise HTTPException(
            415, f"{name}: cannot decode the image ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from err


def create_app(
    target: str | Path,
    *,
    top_k: int = 3,
    max_upload_mb: float = 10.0,
    max_files: int = 16,
    max_pixels: int = 40_000_000,
    max_batch: int = 64,
    model_name: str | None = None,
) -> FastAPI:
    """The server for one model. `model_name`: its name under /v2/models/ (default: the run directory's name, or
    the model file's stem)."""
    from imgtrain.core.saving import load_model, resolve_model_path

    path = resolve_model_path(target)
    model, meta = load_model(path)
    names = list(meta["class_names"])
    shape = cast("tuple[int, int, int]", tuple(int(d) for d in model.input_shape[1:]))  # height, width, channels
    max_bytes = int(max_upload_mb * 2**20)
    model.predict_on_batch(np.zeros((1, *shape), np.float32))  # build the predict function before serving
    batcher = Batcher(lambda x: np.asarray(model.predict_on_batch(x.astype(np.float32))), max_batch=max_batch)
    title = f"{meta.get('model', 'model')} · {meta.get('dataset', path.name)}"
    v2_name = model_name or default_name(path)
    info = describe(
        path, model, meta, v2_name, {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_pixels": max_pixels}
    )

    app = FastAPI(title="imgtrain", description=f"Image classifier {title}: {len(names)} classes.")
    # Room for the multipart framing around max_files files: about 200 bytes of headers a part.
    app.add_middleware(
        BodyLimit, max_bytes=max_bytes * max_files + 65536, what=f"{max_files} files of {max_upload_mb:g} MiB"
    )
    app.state.batcher = batcher

    async def uploads(request: Request) -> list[tuple[str, np.ndarray]]:
        """(name, decoded image) of each file of the multipart field `files`, limits enforced as it streams."""

        async def one(data: bytearray, name: str) -> np.ndarray:
            return await run_in_threadpool(_image, data, name or "file", shape, max_pixels)

        files = await read_files(
            request, one, field="files", max_bytes=max_bytes, limit_mb=max_upload_mb, max_files=max_files
        )
        if not files:
            raise HTTPException(400, "no files: send images as multipart form field 'files'")
        return files

    def top(p: np.ndarray, k: int) -> list[dict[str, Any]]:
        return [
            {"class": names[i], "index": int(i), "probability": float(p[i])}
            for i in np.argsort(-p)[: max(1, min(k, len(names)))]
        ]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.replace("__TITLE__", html.escape(title)).replace("__CLASSES__", html.escape(", ".join(names)))

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "requests": batcher.requests, "model_calls": batcher.batches}

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def predict(request: Request, k: int = top_k) -> dict[str, Any]:
        """Top-k classes for each uploaded image (multipart form, field name `files`)."""
        files = await uploads(request)
        probs = await batcher(np.stack([image for _, image in files]))
        return {"predictions": [{"file": name, "top": top(p, k)} for (name, _), p in zip(files, probs)]}

    add_explain(app, model, names, uploads, top, top_k)
    add_v2(
        app,
        name=v2_name,
        input_name=model.inputs[0].name,
        shape=shape,
        names=names,
        batcher=batcher,
        max_images=max_files,
    )
    return app


def describe(
    path: Path, model: keras.Model, meta: dict[str, Any], v2_name: str, limits: dict[str, float]
) -> dict[str, Any]:
    """GET /model's answer: the model file's name only (where the server keeps its runs is no client's business),
    its classes, input, test metrics, preprocessing and the upload limits."""
    from imgtrain.ship.export import preprocessing

    metrics_file = path.parent / "metrics.json"
    metrics = (
        {k: v for k, v in json.loads(metrics_file.read_text()).items() if k != "test"} if metrics_file.is_file() else {}
    )
    return {
        "model": path.name,
        "v2_name": v2_name,
        "class_names": list(meta["class_names"]),
        "input_shape": [int(d) for d in model.input_shape[1:]],
        "metrics": metrics,
        "preprocessing": preprocessing(model, meta),
        "limits": limits,
    }


def default_name(model_path: Path) -> str:
    """A run's model is known by its run directory's name (runs/mnist-1/best.keras: mnist-1), a lone file by its
    stem."""
    run = model_path.parent
    return run.name if (run / "run.json").is_file() else model_path.stem


def add_explain(
    app: FastAPI,
    model: keras.Model,
    names: list[str],
    uploads: Callable[[Request], Awaitable[list[tuple[str, np.ndarray]]]],
    top: Callable[[np.ndarray, int], list[dict[str, Any]]],
    top_k: int,
) -> None:
    """POST /explain on `app`: `uploads` reads and decodes the files as /predict does, `top` gives the top-k."""
    explainer, explaining = _explainer(model), threading.Lock()  # one heatmap batch at a time: they are heavy

    @app.post("/explain")
    async def explain(request: Request, k: int = top_k, class_name: str | None = None) -> dict[str, Any]:
        """Top-k classes and a heatmap for each uploaded image (multipart form, field name `files`), for the
        predicted class or `class_name`: `heatmap` (rows of values 0-1 at the model's input size) and `overlay`
        (a PNG data URL of the heatmap over the image as the model saw it)."""
        if explainer is None:
            raise HTTPException(501, "heatmaps need the TensorFlow backend; serve this model with it")
        if class_name is not None and class_name not in names:
            raise HTTPException(422, f"unknown class {class_name!r}; valid: {', '.join(names)}")
        files = await uploads(request)
        images = np.stack([image for _, image in files])
        wanted = None if class_name is None else names.index(class_name)
        with_lock = lambda: _locked(explaining, explainer, images, wanted)  # noqa: E731
        got = await run_in_threadpool(with_lock)
        out = []
        for (name, image), heat, p, c in zip(files, got.heatmaps, got.probs, got.classes):
            out.append(
                {
                    "file": name,
                    "top": top(p, k),
                    "method": got.method,
                    "layer": got.layer,
                    "explained": {"class": names[c], "index": int(c), "probability": float(p[c])},
                    "heatmap": np.round(heat, 3).tolist(),
                    "overlay": _overlay_url(image, heat),
                }
            )
        return {"explanations": out}


def _explainer(model: keras.Model) -> Explainer | None:
    """The model's Explainer, or None where heatmaps cannot be made (a JAX process)."""
    from imgtrain.analysis.heatmaps import Explainer
    from imgtrain.core.errors import ImgtrainError

    try:
        explainer = Explainer(model)
    except ImgtrainError:
        return None
    explainer(np.zeros((1, *model.input_shape[1:]), np.float32))  # trace once before serving
    return explainer


def _locked(lock: threading.Lock, explainer: Explainer, images: np.ndarray, wanted: int | None) -> Explanation:
    with lock:
        return explainer(images, wanted)


def _overlay_url(image: np.ndarray, heat: np.ndarray) -> str:
    from imgtrain.analysis.overlays import overlay

    picture = overlay(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), heat)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
