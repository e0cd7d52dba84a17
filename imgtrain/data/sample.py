"""Images picked from a split (decoded from files when it is streamed): a seeded random sample, or given rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np


class Split(Protocol):
    """What is read of a split (imgtrain.data.dataset.Split, which shows samples through this module)."""

    y: np.ndarray
    x: np.ndarray | None
    paths: list[str] | None

    def __len__(self) -> int: ...


def random_images(split: Split, shape: Sequence[int], n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of `n` random members of `split` (decoded from their files when it streams)."""
    pick = np.random.default_rng(seed).choice(len(split), size=min(n, len(split)), replace=False)
    images = images_of(split, pick, shape)
    labels: np.ndarray = split.y[pick]
    return images, labels


def images_of(split: Split, idx: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 images at positions `idx` of a split, decoding files for streamed splits."""
    if split.x is not None:  # split.in_memory
        rows: np.ndarray = split.x[idx]
        return rows
    from imgtrain.data.images import decode

    paths = cast("list[str]", split.paths)  # a streamed split: files
    return (
        np.stack([decode(paths[i], cast("tuple[int, int]", shape[:2]), shape[2]) for i in idx])
        if len(idx)
        else np.zeros((0, *shape), np.uint8)
    )
