"""Exact and near duplicates, within a split and across splits (a test image with a copy in train is a leak).

Exact: the same decoded pixels (a hash). Near: each image's nearest neighbours by cosine similarity of the trained
model's embeddings (faiss), confirmed on the pixels: the standardised thumbnails must correlate at `near` or
more at some shift of up to two pixels. The embeddings find candidates among all pairs in seconds; the pixel check
keeps two different writers' similar digits (one class, close embeddings) apart, while a JPEG re-encoding, a shift
by a pixel or a brightness change still match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imgtrain.auditing.pixels import best_correlation

NEAR = 0.995  # thumbnail correlation at which two images count as the same picture (docs/audit.md)
CANDIDATE = 0.9  # embedding cosine similarity below which a pair is not looked at
NEIGHBOURS = 5  # nearest neighbours of each image looked at


@dataclass
class Images:
    """Every audited image, all splits stacked: its split, row in that split, embedding, thumbnail and hash."""

    split: np.ndarray  # split name of each image
    row: np.ndarray
    embeddings: np.ndarray  # (n, d) float32
    thumbs: np.ndarray  # (n, t, t)
    hashes: np.ndarray  # str


def candidate_pairs(embeddings: np.ndarray, k: int = NEIGHBOURS, gate: float = CANDIDATE) -> np.ndarray:
    """(m, 2) index pairs i < j where j is among i's k nearest neighbours (or i among j's) at cosine >= gate."""
    from imgtrain.auditing.neighbours import Neighbours

    if len(embeddings) < 2:
        return np.zeros((0, 2), np.int64)
    distance, index = Neighbours(min(k, len(embeddings) - 1)).fit(embeddings).kneighbors()
    i = np.repeat(np.arange(len(embeddings)), index.shape[1])
    j, close = index.ravel(), (1 - distance.ravel()) >= gate
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)[close & (i != j)]
    return np.unique(pairs, axis=0)


def exact_pairs(hashes: np.ndarray) -> np.ndarray:
    """(m, 2) pairs (first image with that hash, later image) for every repeated hash."""
    order = np.argsort(hashes, kind="stable")
    h = hashes[order]
    same = np.flatnonzero(h[1:] == h[:-1]) + 1
    if not len(same):
        return np.zeros((0, 2), np.int64)
    start = np.maximum.accumulate(np.where(np.r_[True, h[1:] != h[:-1]], np.arange(len(h)), 0))
    return np.stack([order[start[same]], order[same]], axis=1)


def find_duplicates(images: Images, near: float = NEAR) -> list[dict[str, Any]]:
    """One dict per (image, its copy): `a` the image kept (the earlier, or the training image of a leak), `b` the
    copy, `kind` exact or near, `score` the thumbnail correlation (1.0 for exact copies)."""
    exact = exact_pairs(images.hashes)
    pairs = candidate_pairs(images.embeddings)
    corr = best_correlation(images.thumbs, pairs) if len(pairs) else np.zeros(0)
    found: dict[tuple[int, int], tuple[str, float]] = {
        (int(a), int(b)): ("near", float(c)) for (a, b), c in zip(pairs, corr) if c >= near
    }
    found.update({(int(min(a, b)), int(max(a, b))): ("exact", 1.0) for a, b in exact})
    rank = {"train": 0, "val": 1, "test": 2}
    out: list[dict[str, Any]] = []
    for (a, b), (kind, score) in found.items():
        sa, sb = str(images.split[a]), str(images.split[b])
        if (rank[sa], images.row[a]) > (rank[sb], images.row[b]):
            a, b, sa, sb = b, a, sb, sa
        out.append({"a": a, "b": b, "kind": kind, "score": score, "leak": sa == "train" and sb != "train"})
    out.sort(key=lambda d: (-d["score"], d["b"]))
    return out


def flagged_copies(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each copy once, with its best match: a copy of several images is reported against the closest."""
    seen: set[int] = set()
    out = []
    for p in pairs:  # sorted best first
        if p["b"] not in seen:
            seen.add(p["b"])
            out.append(p)
    return out
