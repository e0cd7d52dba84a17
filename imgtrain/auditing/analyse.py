"""From the kept probabilities and embeddings to the audit's rows (one per flagged image) and its summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from imgtrain.auditing import duplicates, labels, outliers
from imgtrain.auditing.pixels import PixelFacts, pixel_facts

if TYPE_CHECKING:
    from imgtrain.data import Dataset


class Rows:
    """Builds issue rows that name an image the way the dataset ships it (split, position, file)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds, self.names = ds, ds.class_names
        self.rows: list[dict[str, Any]] = []

    def where(self, split: str, row: int) -> dict[str, Any]:
        part = getattr(self.ds, split)
        position = int(part.positions[row])
        files = self.ds.files.get(split) or []
        return {"split": split, "index": position, "path": files[position] if position < len(files) else ""}

    def add(self, issue: str, split: str, row: int, score: float, **more: Any) -> None:
        given = int(getattr(self.ds, split).y[row])
        self.rows.append(
            {
                "issue": issue,
                **self.where(split, row),
                "given": self.names[given],
                "suggested": "",
                "score": round(score, 6),
                "detail": "",
                **more,
            }
        )


def _splits(arrays: dict[str, Any]) -> list[str]:
    return [s for s in ("train", "val", "test") if f"{s}_probs" in arrays]


def analyse(
    ds: Dataset,
    arrays: dict[str, Any],
    emb: dict[str, Any],
    *,
    near: float,
    outlier_fraction: float,
    log: Callable[[str], object] = print,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out = Rows(ds)
    summary: dict[str, Any] = {"images": {}, "notes": list(ds.notes)}
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:  # seconds of each part, for `imgtrain bench --section audit`
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 2)

    for split in _splits(arrays):
        summary["images"][split] = int(len(arrays[f"{split}_y"]))
        summary.update(_labels(out, arrays, split))
    lap("label_issues")
    batch = min(4096, max(16, (1 << 24) // int(np.prod(ds.input_shape))))  # 16 Mi values (64 MB in float32)
    facts = {s: pixel_facts(getattr(ds, s), ds.input_shape, batch) for s in _splits(arrays)}
    lap("pixels")
    summary.update(_duplicates(out, arrays, emb, facts, near))
    lap("duplicates")
    summary.update(_outliers(out, emb, facts, outlier_fraction))
    lap("outliers")
    summary["analysis_seconds"] = seconds
    summary["issues"] = {}
    for r in out.rows:
        key = f"{r['issue']} {r['split']}"
        summary["issues"][key] = summary["issues"].get(key, 0) + 1
    log("issues: " + (", ".join(f"{n:,} {k}" for k, n in summary["issues"].items()) or "none"))
    return out.rows, summary


def _labels(out: Rows, arrays: dict[str, Any], split: str) -> dict[str, Any]:
    probs, y, rows = arrays[f"{split}_probs"], arrays[f"{split}_y"], arrays[f"{split}_rows"]
    names = out.names
    for found in labels.label_issues(probs, y):
        r = int(rows[found["row"]])
        p = float(probs[found["row"], found["given"]])
        out.add("label", split, r, found["score"], suggested=names[found["suggested"]], detail=f"p(given) {p:.3f}")
    joint = labels.confident_joint(probs, y, len(names))
    off = int(joint.sum() - np.trace(joint))
    doubtful = [
        {**out.where(split, int(rows[r])), "given": names[y[r]], "likely": names[probs[r].argmax()], "p_given": q}
        for r, q in labels.most_doubtful(probs, y)
    ]
    return {
        f"{split}_most_doubtful": doubtful,  # the ranking's top ten, flagged or not (docs/audit.md's picture)
        f"{split}_accuracy": float((probs.argmax(1) == y).mean()) if len(y) else 0.0,
        f"{split}_confident_joint": joint.tolist(),
        f"{split}_label_errors_estimated": off,
        f"{split}_label_error_pairs": labels.error_pairs(joint, names),
    }


def _aligned(emb: dict[str, Any], facts: dict[str, PixelFacts]) -> duplicates.Images:
    """Every image with both an embedding and pixel facts (a streamed file that failed to decode has neither)."""
    parts: dict[str, list[Any]] = {k: [] for k in ("split", "row", "embeddings", "thumbs", "hashes")}
    for split, f in facts.items():
        _, ie, ip = np.intersect1d(emb[f"{split}_rows"], f.rows, return_indices=True)
        parts["split"].append(np.full(len(ie), split))
        parts["row"].append(f.rows[ip])
        parts["embeddings"].append(emb[f"{split}_embeddings"][ie].astype(np.float32))
        parts["thumbs"].append(f.thumbs[ip])
        parts["hashes"].append(np.array(f.hashes, dtype=str)[ip] if len(ip) else np.zeros(0, str))
    return duplicates.Images(**{k: np.concatenate(v) for k, v in parts.items()})


def _duplicates(
    out: Rows, arrays: dict[str, Any], emb: dict[str, Any], facts: dict[str, PixelFacts], near: float
) -> dict[str, Any]:
    images = _aligned(emb, facts)
    pairs = duplicates.find_duplicates(images, near)
    counts: dict[str, int] = {}
    leaked: dict[str, set[int]] = {}
    for p in duplicates.flagged_copies(pairs):
        a, b = p["a"], p["b"]
        sa, sb, ra, rb = str(images.split[a]), str(images.split[b]), int(images.row[a]), int(images.row[b])
        issue = "leak" if p["leak"] else "duplicate"
        match = out.where(sa, ra)
        same = out.ds.class_names[int(getattr(out.ds, sa).y[ra])]
        out.add(
            issue,
            sb,
            rb,
            p["score"],
            suggested="",
            detail=f"{p['kind']} copy of {sa} {match['index']} ({same})",
            match_split=sa,
            match_index=match["index"],
            match_path=match["path"],
        )
        key = f"{p['kind']} {sa}-{sb}" if sa != sb else f"{p['kind']} within {sa}"
        counts[key] = counts.get(key, 0) + 1
        if p["leak"]:
            leaked.setdefault(sb, set()).add(rb)
    summary: dict[str, Any] = {"duplicates": counts}
    for split, rows in leaked.items():  # the audit models' score on the images with no copy in train
        probs, y, at = arrays[f"{split}_probs"], arrays[f"{split}_y"], arrays[f"{split}_rows"]
        clean = ~np.isin(at, list(rows))
        summary[f"{split}_accuracy_without_leaks"] = float((probs[clean].argmax(1) == y[clean]).mean())
        summary[f"{split}_leaked_images"] = int((~clean).sum())
    return summary


def _outliers(out: Rows, emb: dict[str, Any], facts: dict[str, PixelFacts], fraction: float) -> dict[str, Any]:
    splits = list(facts)
    scores = outliers.outlier_scores(
        emb["train_embeddings"], {s: emb[f"{s}_embeddings"] for s in splits if s != "train"}
    )
    for split, at in outliers.outliers(scores, fraction).items():
        for i in at:
            out.add(
                "outlier",
                split,
                int(emb[f"{split}_rows"][i]),
                float(1 - scores[split][i]),
                detail="far from its neighbours",
            )
    mean = np.concatenate([facts[s].mean for s in splits])
    std = np.concatenate([facts[s].std for s in splits])
    owner = [(s, int(r)) for s in splits for r in facts[s].rows]
    found, notes = outliers.odd_images(outliers.odd_kinds(mean, std, _sizes(out, owner)))
    for f in found:
        split, row = owner[f["image"]]
        out.add(
            "odd", split, row, f["score"], detail=f"{f['kind']}: mean {mean[f['image']]:.0f}, std {std[f['image']]:.1f}"
        )
    return {"odd_notes": notes}


def _sizes(out: Rows, owner: list[tuple[str, int]]) -> np.ndarray | None:
    """(n, 2) width, height of each image's file as stored (read from the header only); None for built-in data."""
    if not out.ds.files:
        return None
    from PIL import Image

    sizes = np.zeros((len(owner), 2), np.int64)
    for i, (split, row) in enumerate(owner):
        try:
            with Image.open(out.where(split, row)["path"]) as im:
                sizes[i] = im.size
        except (OSError, ValueError):
            sizes[i] = (1, 1)
    return sizes
