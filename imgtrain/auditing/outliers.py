"""Outliers (far from every other image in embedding space) and odd images (blank, nearly constant, very dark or
light, odd size or shape). Each kind is capped: when more than CAP of a dataset's images are of one kind (MNIST is
mostly black), that is the data's character and none of them is flagged; the summary says so."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

OUTLIER_FRACTION = 0.002  # the farthest 0.2 % of the training images set the outlier threshold for every split
CAP = 0.02  # a kind of odd image found in more than 2 % of the images is not flagged
DARK, LIGHT = 16.0, 239.0  # mean pixel (0-255) below / above which an image is very dark / light
FLAT = 4.0  # pixel standard deviation (0-255) below which an image is nearly constant


def outlier_scores(train: np.ndarray, others: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """cleanlab's out-of-distribution score (mean distance to the nearest training embeddings, mapped to (0, 1];
    lower is farther) for the training images (each against the others) and for every other split."""
    from cleanlab.outlier import OutOfDistribution

    from imgtrain.auditing.neighbours import Neighbours

    if len(train) < 3:
        return {"train": np.ones(len(train)), **{k: np.ones(len(v)) for k, v in others.items()}}
    ood = OutOfDistribution({"knn": Neighbours(min(10, len(train) - 1))})
    with warnings.catch_warnings():  # cleanlab notes that the knn given was fitted: here on purpose, by faiss
        warnings.filterwarnings("ignore", message="A KNN estimator has previously already been fit")
        scores = {"train": np.asarray(ood.fit_score(features=train.astype(np.float32), verbose=False))}
    for name, features in others.items():
        scores[name] = np.asarray(ood.score(features=features.astype(np.float32))) if len(features) else np.zeros(0)
    return scores


def outliers(scores: dict[str, np.ndarray], fraction: float = OUTLIER_FRACTION) -> dict[str, np.ndarray]:
    """Per split, the positions (into its scores) below the training images' `fraction` quantile, worst first."""
    if not len(scores["train"]):
        return {k: np.zeros(0, np.int64) for k in scores}
    limit = np.quantile(scores["train"], fraction)
    return {k: np.flatnonzero(s <= limit)[np.argsort(s[s <= limit], kind="stable")] for k, s in scores.items()}


def odd_kinds(mean: np.ndarray, std: np.ndarray, sizes: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (mask of the images of that kind, a severity in [0, 1] each) for all images of the dataset."""
    kinds = {
        "blank": (std == 0, np.ones_like(std)),
        "nearly constant": ((std > 0) & (std < FLAT), 1 - std / FLAT),
        "very dark": (mean < DARK, 1 - mean / DARK),
        "very light": (mean > LIGHT, (mean - LIGHT) / (255 - LIGHT)),
    }
    if sizes is not None and len(sizes):  # (n, 2) width, height of the files as stored
        aspect = np.log(sizes[:, 0] / np.maximum(sizes[:, 1], 1))
        off = np.abs(aspect - np.median(aspect))
        area = sizes.prod(axis=1).astype(np.float64)
        small = area < np.median(area) / 16
        kinds["odd aspect ratio"] = (off > np.log(2), np.minimum(off / np.log(8), 1))
        kinds["very small"] = (small, 1 - area / max(np.median(area) / 16, 1))
    return kinds


def odd_images(
    kinds: dict[str, tuple[np.ndarray, np.ndarray]], cap: float = CAP
) -> tuple[list[dict[str, Any]], list[str]]:
    """([{image, kind, score}] worst first per kind, notes on the kinds too common to flag)."""
    found, notes = [], []
    for kind, (mask, severity) in kinds.items():
        n = int(mask.sum())
        if n > cap * len(mask):
            notes.append(f"{n:,} images ({n / len(mask):.0%}) are {kind}: the data's character, not flagged")
            continue
        idx = np.flatnonzero(mask)
        for i in idx[np.argsort(-severity[idx], kind="stable")]:
            found.append({"image": int(i), "kind": kind, "score": float(np.clip(severity[i], 0, 1))})
    return found, notes
