"""audit.html: the review page. Per issue type a grid of the flagged images, worst first (a copy shown beside the
image it copies), filterable by class and split; keep / relabel / drop on each; a button that downloads the
decisions as a CSV for `imgtrain train --set decisions=FILE`. One self-contained file, as report.html."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas

    from imgtrain.data import Dataset

TITLES = {
    "label": "Label issues",
    "leak": "Leaks: held-out images with a copy in train",
    "duplicate": "Duplicates within a split",
    "outlier": "Outliers: far from every other image",
    "odd": "Odd images",
}
SHOWN = 300  # images per issue type on the page (the worst); issues.csv lists them all
THUMB_PX = 96  # largest side of a photo's thumbnail


def image_reader(ds: Dataset) -> Callable[[str, int], np.ndarray]:
    """(split, position as shipped) -> the image: from memory, or the file decoded at the dataset's size."""
    from imgtrain.data.images import try_decode

    def read(split: str, position: int) -> np.ndarray:
        part = getattr(ds, split)
        row = int(np.flatnonzero(part.positions == position)[0]) if part.origin is not None else position
        if part.x is not None:
            return np.asarray(part.x[row])
        image, _ = try_decode(part.paths[row], ds.input_shape[:2], ds.input_shape[2])
        return image if image is not None else np.zeros(ds.input_shape, np.uint8)  # a file that failed: black

    return read


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    pil.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _cards(table: pandas.DataFrame, read: Callable[[str, int], np.ndarray]) -> list[dict[str, Any]]:
    cards = []
    for key, r in table.head(SHOWN).iterrows():
        match = r["match_split"] if isinstance(r["match_split"], str) and r["match_split"] else None
        cards.append(
            {
                "key": key,
                "split": r["split"],
                "index": int(r["index"]),
                "path": r["path"] if isinstance(r["path"], str) else "",
                "name": Path(r["path"]).name if isinstance(r["path"], str) and r["path"] else "",
                "given": r["given"],
                "suggested": r["suggested"] if isinstance(r["suggested"], str) else "",
                "score": float(r["score"]),
                "detail": r["detail"],
                "png": png(read(r["split"], int(r["index"]))),
                "match_png": png(read(match, int(r["match_index"]))) if match else None,
            }
        )
    return cards


def headline(summary: dict[str, Any]) -> str:
    images = ", ".join(f"{n:,} {s}" for s, n in summary["images"].items())
    counts = summary.get("issues", {})
    found = ", ".join(f"{n:,} {k}" for k, n in counts.items()) or "no issues"
    return f"{images} images audited: {found}."


def write_page(out: Path, ds: Dataset, table: pandas.DataFrame, summary: dict[str, Any]) -> Path:
    from imgtrain.analysis.pages import render
    from imgtrain.core.saving import atomic_write

    read = image_reader(ds)
    sections = []
    for issue, title in TITLES.items():
        rows = table[table["issue"] == issue]
        sections.append(
            {
                "issue": issue,
                "title": title,
                "total": len(rows),
                "shown": min(len(rows), SHOWN),
                "cards": _cards(rows, read),
            }
        )
    recipe = summary.get("recipe", {})
    html = render(
        "audit.html.j2",
        dataset=summary.get("dataset", ds.name),
        headline=headline(summary),
        folds=summary.get("folds", 0),
        recipe=", ".join(f"{k} {v}" for k, v in recipe.items() if k in ("model", "epochs", "learning_rate")),
        classes=ds.class_names,
        splits=list(summary["images"]),
        sections=sections,
    )
    atomic_write(out / "audit.html", html)
    return out / "audit.html"
