"""`imgtrain explain`: for each image file, the top-k predictions and a heatmap for one class, written as a PNG
overlay on the image beside a JSON of the numbers (heatmaps.py computes the maps)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, cast

import numpy as np
import typer

from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import keras
    from PIL import Image as PILImage

MIN_SIDE = 224  # pixels: a smaller image (MNIST's 28x28) is enlarged for its overlay, in blocks, to be seen


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8 through matplotlib's 'inferno' colour map (dark: nothing, bright: much)."""
    from matplotlib import colormaps

    rgba: np.ndarray = colormaps["inferno"](np.clip(heatmap, 0, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


def overlay(image: PILImage.Image, heatmap: np.ndarray, alpha: float = 0.5) -> PILImage.Image:
    """A PIL image: `image` (a PIL image, any size) with `heatmap` (any size) resized onto it and blended."""
    from PIL import Image

    image = image.convert("RGB")
    scale = max(1, -(-MIN_SIDE // max(1, min(image.size))))  # ceil(MIN_SIDE / shorter side)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(
        image.size, Image.Resampling.BILINEAR
    )
    colour = Image.fromarray(colorize(np.asarray(heat, np.float32) / 255))
    return Image.blend(image, colour, alpha)


def _names(paths: list[str], out: Path) -> list[str]:
    """An output stem per file: its own, with -2, -3 ... where two files share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def explain_files(
    model: keras.Model,
    paths: list[str],
    class_names: list[str],
    out: Path,
    class_name: str | None = None,
    method: str = "auto",
    layer: str | None = None,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """One dict per file ({'file', 'top', 'explained', 'method', 'layer', 'overlay', 'json', 'error'}), with
    OUT/<stem>.png (the overlay) and OUT/<stem>.json (that dict and the heatmap at the model's input size)."""
    from PIL import Image

    from imgtrain.analysis.heatmaps import explain
    from imgtrain.core.saving import atomic_write, atomic_write_json
    from imgtrain.data.images import try_decode

    if class_name is not None and class_name not in class_names:
        raise ImgtrainError(f"unknown class {class_name!r}; valid: {', '.join(class_names)}")
    h, w, c = model.input_shape[1:]
    decoded = [try_decode(p, (h, w), c) for p in paths]
    ok = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
    rows: list[dict[str, Any]] = [{"file": p, "error": reason} for p, (_, reason) in zip(paths, decoded)]
    if not ok:
        return rows
    wanted = None if class_name is None else class_names.index(class_name)
    images = [cast(np.ndarray, decoded[i][0]) for i in ok]  # `ok`: the files that decoded
    got = explain(model, np.stack(images), class_index=wanted, method=method, layer=layer)
    out.mkdir(parents=True, exist_ok=True)
    stems = _names(paths, out)
    k = max(1, min(top_k, len(class_names)))
    for j, i in enumerate(ok):
        probs, cls = got.probs[j], int(got.classes[j])
        row = rows[i]
        row.update(
            top=[
                {"class": class_names[t], "index": int(t), "probability": float(probs[t])}
                for t in np.argsort(-probs)[:k]
            ],
            explained={"class": class_names[cls], "index": cls, "probability": float(probs[cls])},
            method=got.method,
            layer=got.layer,
            overlay=str(out / f"{stems[i]}.png"),
            json=str(out / f"{stems[i]}.json"),
        )
        with Image.open(paths[i]) as im:
            picture = overlay(im, got.heatmaps[j])
        atomic_write(out / f"{stems[i]}.png", _png_bytes(picture))
        atomic_write_json(out / f"{stems[i]}.json", {**row, "heatmap": np.round(got.heatmaps[j], 4).tolist()})
    return rows


def _png_bytes(picture: PILImage.Image) -> bytes:
    import io

    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def explain_command(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="run directory or model file"),
    images: List[str] = typer.Argument(..., help="image files and/or folders"),
    class_name: Optional[str] = typer.Option(None, "--class", help="explain this class (default: the predicted one)"),
    method: str = typer.Option(
        "auto", "--method", help="auto (hirescam, or saliency without convolutions), hirescam, gradcam or saliency"
    ),
    layer: Optional[str] = typer.Option(None, "--layer", help="the feature map for Grad-CAM (default: the last)"),
    top_k: int = typer.Option(3, "--top-k", "-k", help="classes to list per image"),
    out: Path = typer.Option(Path("explained"), "--out", "-o", help="folder for the overlays and JSON files"),
) -> None:
    """Why the model decided: a heatmap per image (HiResCAM/Grad-CAM, or saliency for a model without convolutions)
    as a PNG overlay beside a JSON of the numbers, with the top-k predictions."""
    from imgtrain.analysis.heatmaps import METHODS
    from imgtrain.analysis.predict import expand_paths
    from imgtrain.core.backend import use_backend
    from imgtrain.core.saving import load_model, resolve_model_path

    if method not in METHODS:
        raise ImgtrainError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if top_k < 1:
        raise ImgtrainError(f"--top-k must be at least 1 (got {top_k})")
    resolve_model_path(model_path)
    paths = expand_paths(images)
    use_backend("tensorflow")  # gradients come from TensorFlow; a .keras file loads on any backend
    model, meta = load_model(model_path)
    rows = explain_files(model, paths, meta["class_names"], out, class_name, method, layer, top_k)
    for r in rows:
        if r["error"]:
            typer.echo(f"skipped {r['file']}: {r['error']}", err=True)
            continue
        best = r["top"][0]
        typer.echo(
            f"{r['file']}: {best['class']} {best['probability']:.3f}; {r['method']} for "
            f"{r['explained']['class']} -> {r['overlay']}"
        )
    done = sum(not r["error"] for r in rows)
    typer.echo(
        f"written: {done} overlay{'s' * (done != 1)} and JSON file{'s' * (done != 1)} in {out}"
        + (f" ({len(rows) - done} skipped)" if done < len(rows) else "")
    )
    if not done:
        raise ImgtrainError(f"none of the {len(rows)} images could be decoded")
