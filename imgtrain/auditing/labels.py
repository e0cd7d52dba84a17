"""Label issues by confident learning (cleanlab): images whose given label the out-of-fold probabilities doubt,
ranked worst first by cleanlab's self-confidence label-quality score, each with the label the models suggest; and
the confident joint, cleanlab's estimate of how many images of each given class truly belong to each other class."""

from __future__ import annotations

from typing import Any

import numpy as np


def label_issues(probs: np.ndarray, given: np.ndarray) -> list[dict[str, Any]]:
    """One dict per flagged image (row, given, suggested, score), worst first. `score`: 1 - cleanlab's label
    quality (self-confidence: the probability the models give the given label), so higher is more doubtful."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if len(given) == 0:
        return []
    flagged = find_label_issues(given, probs, filter_by="prune_by_noise_rate", n_jobs=1)  # n_jobs=1: no fork of TF
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    rows = np.flatnonzero(flagged)
    rows = rows[np.argsort(quality[rows], kind="stable")]
    return [
        {"row": int(r), "given": int(given[r]), "suggested": int(probs[r].argmax()), "score": float(1 - quality[r])}
        for r in rows
    ]


def most_doubtful(probs: np.ndarray, given: np.ndarray, n: int = 10) -> list[tuple[int, float]]:
    """The `n` rows whose given label the models believe least (cleanlab's self-confidence ranking, flagged or
    not): (row, probability of the given label), lowest first."""
    from cleanlab.rank import get_label_quality_scores

    if len(given) == 0:
        return []
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    return [(int(r), float(quality[r])) for r in np.argsort(quality, kind="stable")[:n]]


def confident_joint(probs: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
    """(given class, true class) -> estimated number of images, calibrated to the split's class counts; the
    off-diagonal cells are the estimated label errors."""
    from cleanlab.count import compute_confident_joint

    if len(np.unique(given)) < 2:
        return np.diag(np.bincount(given, minlength=num_classes)).astype(np.int64)
    joint = compute_confident_joint(given, probs, calibrate=True)
    counts: np.ndarray = np.rint(np.asarray(joint)).astype(np.int64)
    return counts


def error_pairs(joint: np.ndarray, class_names: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells of the confident joint: which label is given where which class is meant."""
    off = joint.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:top]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [
        {"given": class_names[g], "likely": class_names[t], "images": int(off[g, t])} for g, t in pairs if off[g, t] > 0
    ]
