"""Seeded, stratified index splits (train/validation, subsets)."""

from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with about `fraction` of each class held out.

    Falls back to a plain seeded shuffle when a class has fewer than two members, where stratifying is undefined.
    """
    from sklearn.model_selection import train_test_split  # imported here: sklearn costs ~1 s at start-up

    idx = np.arange(len(y))
    n_out = int(round(len(y) * fraction))
    if n_out == 0 or fraction == 0:
        return idx, idx[:0]
    if n_out >= len(y):
        raise ValueError(f"a split of {fraction} leaves no images to train on ({len(y)} in all)")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and n_out >= len(counts) and len(y) - n_out >= len(counts) else None
    keep, out = train_test_split(idx, test_size=n_out, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(out)


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` items drawn with class proportions kept."""
    if n >= len(y):
        return np.arange(len(y))
    keep, _ = stratified_split(y, 1 - n / len(y), seed)
    return keep


def parse_fold(fold: str) -> tuple[int, int]:
    """ "K/N" -> (K, N), 1 <= K <= N, N >= 2."""
    k, n = (int(v) for v in fold.split("/"))
    if n < 2 or not 1 <= k <= n:
        raise ValueError(f"fold {fold!r}: K/N needs 1 <= K <= N and N >= 2 folds")
    return k, n


def fold_of_each(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Which of `folds` stratified, seeded folds (0..folds-1) each item is in: every class spread evenly, so a
    class needs at least `folds` items (checked by the caller, which knows the class names)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(y), np.int64)
    for k, (_, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        out[held] = k
    return out
