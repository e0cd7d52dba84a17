"""The Open Inference Protocol (KServe v2, REST) beside /predict, so that standard clients work unchanged.

GET /v2 (server metadata), /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/1] (model metadata),
/v2/models/{name}[/versions/1]/ready; POST /v2/models/{name}[/versions/1]/infer. The model has one input, raw
pixels NHWC (UINT8 or FP32, 0-255, at the model's input size: the model rescales them itself) and one output,
`probabilities` (FP32, batch x classes). Tensor data may come as JSON or, as tritonclient sends it by default,
with the binary tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes, then the raw
tensors); the classification extension (`"classification": k` on the output) answers "probability:index:class"
strings for the top k. Errors are JSON `{"error": "..."}` with a 4xx status, as the protocol asks.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

if TYPE_CHECKING:
    from imgtrain.ship.serve.batcher import Batcher

VERSION = "1"
OUTPUT = "probabilities"
DTYPES: dict[str, type[np.generic]] = {
    "UINT8": np.uint8,
    "FP32": np.float32,
}  # what the input accepts; the model computes in float32
HEADER = "Inference-Header-Content-Length"
# The most a request's body may need, per input value: a JSON number (up to 32 characters: "-1.2345678901234567e-308"
# has 24) and its share of commas, brackets and spaces. A body over max_images images of this is refused before it
# is read, so that a 100 MB body of numbers for a one-image shape is never parsed (parsing costs ~10x its size).
BYTES_PER_VALUE = 48
HEAD_BYTES = 65536  # the JSON around the data: names, shape, parameters, outputs
JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


class ProtocolError(Exception):
    """A request that the protocol cannot serve: its HTTP status and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        # a message may quote the request, and JSON may carry lone surrogates that UTF-8 cannot encode
        super().__init__(message.encode("utf-8", "backslashreplace").decode("utf-8"))
        self.status = status


def add_v2(
    app: FastAPI,
    *,
    name: str,
    input_name: str,
    shape: tuple[int, ...],
    names: list[str],
    batcher: Batcher,
    max_images: int,
) -> None:
    """The protocol's routes on `app` for one model called `name`; `batcher` runs float32 NHWC batches, as
    /predict's does, and a request carries at most `max_images` images (/predict's --max-files)."""
    from imgtrain.core.version import __version__

    def check_model(model: str, version: str | None = None) -> None:
        if model != name:
            raise ProtocolError(404, f"unknown model {model!r}; this server serves {name!r}")
        if version not in (None, VERSION):
            raise ProtocolError(404, f"model {name!r} has no version {version!r}; its only version is {VERSION!r}")

    def metadata(model: str, version: str | None = None) -> dict[str, Any]:
        check_model(model, version)
        return {
            "name": name,
            "versions": [VERSION],
            "platform": "keras",
            "inputs": [{"name": input_name, "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(names)]}],
            "parameters": {
                "class_names": names,
                "pixel_range": [0, 255],
                "layout": "NHWC",
                "input_datatypes": list(DTYPES),
            },
        }

    def ready(model: str, version: str | None = None) -> dict[str, Any]:
        check_model(model, version)
        return {"name": name, "ready": True}

    limit = HEAD_BYTES + max_images * int(np.prod(shape)) * BYTES_PER_VALUE

    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        check_model(model, version)
        req, tail = _split(await _body(request, limit, max_images), request.headers.get(HEADER))
        images = _input(req, tail, input_name, shape, max_images)
        probs = np.asarray(await batcher(images), np.float32)
        return _answer(req, probs, names, name)

    app.add_exception_handler(ProtocolError, lambda _, err: JSONResponse({"error": str(err)}, err.status))
    app.get("/v2", tags=["v2"])(
        lambda: {"name": "imgtrain", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}
    )
    app.get("/v2/health/live", tags=["v2"])(lambda: {"live": True})
    app.get("/v2/health/ready", tags=["v2"])(lambda: {"ready": True})
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.get(prefix, tags=["v2"])(metadata)
        app.get(prefix + "/ready", tags=["v2"])(ready)
        app.post(prefix + "/infer", tags=["v2"])(infer)


async def _body(request: Request, limit: int, max_images: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to be over `limit` bytes: before reading when its
    Content-Length says so, else the moment the bytes read pass it."""
    why = f"over the {limit:,} bytes that {max_images} images at this model's input size can need"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ProtocolError(413, f"a body of {int(length):,} bytes is {why}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"the body is {why}")
        chunks.append(chunk)
    return b"".join(chunks)


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The `parameters` object of a request, input or output (none: {}); any other JSON value is a 400."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"'parameters' of {where} must be an object, not {JSON_TYPES.get(type(params))}")
    return params


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the request's JSON, the binary tensor data after it)."""
    if header_length is None:
        n = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise ProtocolError(400, f"{HEADER} {header_length!r} is not a byte count within the body's {len(body)} bytes")
    else:
        n = int(header_length)
    try:
        req = json.loads(body[:n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(400, f"the request is not valid JSON: {err}") from err
    except RecursionError as err:  # Python's parser recurses once per level
        raise ProtocolError(400, "the request's JSON is nested too deeply") from err
    if not isinstance(req, dict):
        raise ProtocolError(400, "the request must be a JSON object with 'inputs'")
    if "id" in req and not isinstance(req["id"], str):
        raise ProtocolError(400, f"the request's 'id' must be a string, not {JSON_TYPES.get(type(req['id']))}")
    return req, body[n:]


def _input(req: dict[str, Any], tail: bytes, input_name: str, shape: tuple[int, ...], max_images: int) -> np.ndarray:
    """The one input tensor of `req` as float32 NHWC, every property checked against the model's input."""
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"'inputs' must hold exactly one tensor, {input_name!r}")
    t = inputs[0]
    if t.get("name") != input_name:
        raise ProtocolError(400, f"unknown input {t.get('name')!r}; this model's input is {input_name!r}")
    want = f"[N, {', '.join(map(str, shape))}]"
    dims = t.get("shape")
    if (
        not isinstance(dims, list)
        or len(dims) != 1 + len(shape)
        or not all(type(d) is int for d in dims)
        or tuple(dims[1:]) != tuple(shape)
        or dims[0] < 1
    ):
        raise ProtocolError(400, f"input {input_name!r} has shape {dims}; this model takes {want} (raw pixels, NHWC)")
    if dims[0] > max_images:
        raise ProtocolError(400, f"{dims[0]} images in one request; at most {max_images}")
    datatype = t.get("datatype")  # any JSON value: only a string may name a type
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(400, f"input {input_name!r} has datatype {t.get('datatype')!r}; valid: {', '.join(DTYPES)}")
    count = int(np.prod(dims))
    size = _params(t, f"input {input_name!r}").get("binary_data_size")
    if size is not None:
        if size != count * np.dtype(dtype).itemsize or len(tail) != size:
            raise ProtocolError(
                400,
                f"input {input_name!r}: shape {dims} of {t['datatype']} is "
                f"{count * np.dtype(dtype).itemsize} bytes; binary_data_size says {size} and "
                f"{len(tail)} bytes follow the JSON",
            )
        x = np.frombuffer(tail, dtype).reshape(dims)
    else:
        x = _json_data(t.get("data"), dtype, count, input_name, dims)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError(400, f"input {input_name!r} holds NaN or infinite values; pixels are 0-255")
    return x


def _json_data(data: Any, dtype: type[np.generic], count: int, input_name: str, dims: list[int]) -> np.ndarray:
    if data is None:
        raise ProtocolError(400, f"input {input_name!r} has no 'data' and no binary_data_size")
    try:
        flat = np.asarray(data, np.float64).ravel()  # flat or nested lists, as the protocol allows
    except (TypeError, ValueError, OverflowError, RecursionError) as err:  # OverflowError: an int over 1e308
        raise ProtocolError(400, f"input {input_name!r}: 'data' must be numbers") from err
    if flat.size != count:
        raise ProtocolError(400, f"input {input_name!r}: shape {dims} needs {count} values; 'data' has {flat.size}")
    if dtype == np.uint8 and ((flat < 0) | (flat > 255) | (flat != np.round(flat))).any():
        raise ProtocolError(400, f"input {input_name!r}: UINT8 values must be whole numbers 0-255")
    return flat.reshape(dims)


def _answer(req: dict[str, Any], probs: np.ndarray, names: list[str], model: str) -> Response:
    """The response: each requested output (all by default) in JSON or as binary tensor data."""
    binary_default = bool(_params(req, "the request").get("binary_data_output", False))
    wanted = req.get("outputs") or [{"name": OUTPUT}]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
    outputs, blobs = [], []
    for o in wanted:
        if o.get("name") != OUTPUT:
            raise ProtocolError(400, f"unknown output {o.get('name')!r}; this model's output is {OUTPUT!r}")
        params = _params(o, f"output {OUTPUT!r}")
        k = params.get("classification", 0)
        if type(k) is not int or k < 0:
            raise ProtocolError(400, f"'classification' must be a whole number of classes (got {k!r})")
        if k:
            values = _classes(probs, names, min(k, len(names)))
            out: dict[str, Any] = {"name": OUTPUT, "datatype": "BYTES", "shape": list(values.shape)}
            blob = b"".join(struct.pack("<I", len(v)) + v for v in values.ravel())
            data = [v.decode() for v in values.ravel()]
        else:
            out = {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
            blob, data = probs.astype("<f4").tobytes(), probs.ravel().tolist()
        if params.get("binary_data", binary_default):
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = data
        outputs.append(out)
    head = {"model_name": model, "model_version": VERSION, "outputs": outputs}
    if "id" in req:
        head["id"] = req["id"]
    text = json.dumps(head).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(blobs), media_type="application/octet-stream", headers={HEADER: str(len(text))})


def _classes(probs: np.ndarray, names: list[str], k: int) -> np.ndarray:
    """The classification extension: the top k of each image as b"probability:index:class", best first."""
    top = np.argsort(-probs, axis=1)[:, :k]
    return np.array([[f"{p[i]:.6f}:{i}:{names[i]}".encode() for i in row] for p, row in zip(probs, top)], dtype=object)
