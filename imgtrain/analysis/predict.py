"""Top-k predictions for image files, with class names and probabilities."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgtrain.core.errors import ImgtrainError
from imgtrain.data.images import DECODE_ERRORS, GRAY_MODES, is_image_name, peek, try_decode

if TYPE_CHECKING:
    from collections.abc import Sequence

    import keras


def expand_paths(items: list[str]) -> list[str]:
    """Files as given; folders walked for image files (sorted)."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                out += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
        elif p.is_file():
            out.append(str(p))
        else:
            raise ImgtrainError(f"{item}: no such file or folder")
    if not out:
        raise ImgtrainError(f"no image files in {', '.join(items)} (extensions: jpg, jpeg, png, bmp, gif, webp)")
    return out


FAR_SCALE = 2.0  # a side resized by more than this factor (up or down) is far from what the model was trained on
FAR_ASPECT = 1.25  # and so is a change of aspect ratio beyond this factor (the image is squashed)


def conversion_note(path: str, input_shape: Sequence[int]) -> str | None:
    """What decoding does to this file to fit a model of `input_shape` (h, w, c) when that is far from the file
    itself: colour dropped or invented, a large resize, a squashed aspect ratio; None when it fits."""
    h, w, c = input_shape
    try:
        (fh, fw), mode = peek(path)
    except DECODE_ERRORS:
        return None
    gray = mode in GRAY_MODES
    what: list[str] = []
    if c == 1 and not gray:
        what.append("converted from colour to grayscale")
    elif c == 3 and gray:
        what.append("grayscale copied into 3 colour channels")
    scales = (fh / h, fw / w)
    if max(scales) > FAR_SCALE or min(scales) < 1 / FAR_SCALE or max(scales) / min(scales) > FAR_ASPECT:
        what.append(f"resized from {fw}x{fh} to {w}x{h}")
    if not what:
        return None
    kind = "grayscale" if c == 1 else "colour"
    return f"{' and '.join(what)} (the model was trained on {w}x{h} {kind} images)"


def decode_files(paths: list[str], shape: Sequence[int]) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """(one row per file, {'file', 'top': [], 'error', 'note'}; the images of the files that decoded, stacked in
    order, or None). `note` says when a file was converted far from the model's input (conversion_note)."""
    h, w, c = shape
    rows: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    for p in paths:
        arr, reason = try_decode(p, (h, w), c)
        if arr is not None:
            images.append(arr)
        rows.append(
            {"file": p, "top": [], "error": reason, "note": conversion_note(p, shape) if arr is not None else None}
        )
    return rows, (np.stack(images) if images else None)


def fill_top(rows: list[dict[str, Any]], probs: np.ndarray, class_names: list[str], top_k: int) -> None:
    """Each decoded row's 'top': its `top_k` classes with probabilities (`probs`: one row per decoded file)."""
    for r, pr in zip((r for r in rows if not r["error"]), probs):
        best = np.argsort(-pr)[:top_k]
        r["top"] = [{"class": class_names[i], "index": int(i), "probability": float(pr[i])} for i in best]


def predict_files(
    model: keras.Model, paths: list[str], class_names: list[str], top_k: int = 3, batch_size: int = 256
) -> list[dict[str, Any]]:
    """One dict per file: {'file', 'top': [{'class', 'index', 'probability'}], 'error', 'note'} (decode_files)."""
    rows, images = decode_files(paths, model.input_shape[1:])
    if images is not None:
        from imgtrain.analysis.evaluate import predict_arrays

        fill_top(rows, predict_arrays(model, images, batch_size), class_names, max(1, min(top_k, len(class_names))))
    return rows


CSV_COLUMNS = ["file", "rank", "class", "index", "probability", "error", "note"]


def csv_rows(row: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A file's rows in the CSV: one per class of its top-k, or one with its error."""
    if row["error"]:
        return [(row["file"], "", "", "", "", row["error"], "")]
    return [
        (row["file"], rank + 1, t["class"], t["index"], t["probability"], "", row.get("note") or "")
        for rank, t in enumerate(row["top"])
    ]


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    # the ranked rows of every file, then the files that could not be read
    flat = [t for r in rows if not r["error"] for t in csv_rows(r)] + [
        t for r in rows if r["error"] for t in csv_rows(r)
    ]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(flat)
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ImgtrainError(f"unknown format {fmt!r}; valid: table, csv, json")
    fw = min(60, max(len("file"), *(len(r["file"]) for r in rows)))
    lines = [f"{'file':<{fw}}  rank  {'class':<16} probability"]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['file']:<{fw}}  skipped: {r['error']}")
        for rank, t in enumerate(r["top"]):
            lines.append(
                f"{(r['file'] if rank == 0 else ''):<{fw}}  {rank + 1:4d}  {t['class']:<16} {t['probability']:11.4f}"
            )
    return "\n".join(lines)
