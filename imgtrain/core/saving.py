"""Files written atomically, and models saved with what a user needs to feed them.

A `.keras` file is a zip; beside Keras' own entries we add `imgtrain.json` (class names, input shape, pixel range).
Keras ignores the extra entry, so `keras.models.load_model` opens the file without imgtrain.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import keras

META_ENTRY = "imgtrain.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path, suffix: str) -> str:
    """A new empty file next to `path` (same filesystem, so os.replace is atomic), with normal permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file should look like any other
    return tmp


# the name _temp_beside gives: "." + the final name + "." + mkstemp's 8 random characters + the suffix
STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.tmp|\.keras|\.weights\.h5|\.h5)$")


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temporary files a writer killed mid-write (kill -9, power cut) left in `folder`: they are never
    read (the rename never happened), and a resumed run would otherwise keep them. Returns their names."""
    gone = []
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_file() and STALE_TEMP.match(p.name):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder and `os.replace`, so readers see old or new, never half."""
    path = Path(path)
    tmp = _temp_beside(path, ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")


def save_model(model: keras.Model, path: str | Path, meta: dict[str, Any]) -> None:
    """Save `model` to `path` (.keras, or .h5 for the legacy format) atomically, with `meta` inside .keras files."""
    from imgtrain.core.backend import undistributed

    path = Path(path)
    # Keras picks the format from the suffix, so the temporary file keeps the whole of it
    tmp = _temp_beside(path, ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix)
    try:
        # a data-parallel model is saved by process 0 alone: it holds every replicated weight, and the helper objects
        # Keras creates while saving must stay on its own devices instead of waiting for the other processes
        with undistributed():
            if path.suffix == ".keras":
                model.save(tmp)
                with zipfile.ZipFile(tmp, "a") as z:
                    z.writestr(META_ENTRY, json.dumps(meta, indent=2))
            elif path.name.endswith(".weights.h5"):
                os.unlink(tmp)  # Keras refuses to overwrite without asking
                model.save_weights(tmp)
            else:
                os.unlink(tmp)
                model.save(tmp)  # legacy HDF5, chosen by the .h5 suffix
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(path: str | Path) -> dict[str, Any]:
    """imgtrain.json from inside a .keras file, else the run.json beside it, else {}."""
    path = Path(path)
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if META_ENTRY in z.namelist():
                meta: dict[str, Any] = json.loads(z.read(META_ENTRY))
                return meta
    run_json = path.parent / "run.json"
    if run_json.is_file():
        data = json.loads(run_json.read_text())
        return {"class_names": data.get("data", {}).get("class_names")}
    return {}


def resolve_model_path(target: str | Path) -> Path:
    """A run directory means its best.keras; a file is taken as it is."""
    target = Path(target)
    if target.is_dir():
        for name in ("best.keras", "last.keras"):
            if (target / name).is_file():
                return target / name
        raise ImgtrainError(f"{target}: no best.keras or last.keras in this directory (is it a run directory?)")
    if not target.is_file():
        raise ImgtrainError(f"{target}: no such run directory or model file")
    if target.suffix not in (".keras", ".h5"):
        raise ImgtrainError(f"{target}: unknown model format {target.suffix!r}; valid: .keras, .h5, or a run directory")
    return target


def load_model(target: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """(keras.Model, meta) from a run directory or model file; never runs code from the file (safe_mode)."""
    import keras

    path = resolve_model_path(target)
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=True)
    except Exception as err:  # Keras raises many types for a bad file; the user needs one line
        raise ImgtrainError(
            f"{path}: cannot load model ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    meta = read_meta(path)
    shape = tuple(model.input_shape[1:])
    meta.setdefault("input_shape", list(shape))
    if not meta.get("class_names"):
        meta["class_names"] = [str(i) for i in range(model.output_shape[-1])]
    return model, meta


def float32_copy(model: keras.Model) -> keras.Model:
    """The same model computing in float32, with the same weights (a mixed-precision model's variables are float32
    already), or `model` itself when it computes in float32: exporters and runtimes such as ONNX Runtime reject
    graphs that mix bfloat16 and float32 tensors. Nested models are converted too (their configs nest)."""
    converted: list[str] = []  # the policies replaced; none: the model computes in float32 already

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            name = str(node.get("config", {}).get("name")) if node.get("class_name") == "DTypePolicy" else ""
            if name.startswith("mixed_") or name in ("bfloat16", "float16"):
                converted.append(name)
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: plain(v) for k, v in node.items()}
        return [plain(v) for v in node] if isinstance(node, list) else node

    config = plain(model.get_config())
    if not converted:
        return model
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def weights_hash(model: keras.Model) -> str:
    """sha256 over every weight's bytes, in layer order: equal hashes mean bit-identical models."""
    import hashlib

    from imgtrain.core.hashing import array_bytes

    h = hashlib.sha256()
    for w in model.get_weights():
        # an ndarray has the buffer protocol; numpy's stubs declare __buffer__ only for Python >= 3.12
        h.update(array_bytes(w))  # type: ignore[arg-type]
    return h.hexdigest()
