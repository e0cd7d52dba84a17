"""What the audit needs of each image's pixels, read once per split: a hash of the decoded pixels (exact
duplicates), a small standardised grayscale thumbnail (to confirm near duplicates), brightness and contrast (odd
images). Streamed splits are decoded batch by batch, so memory stays at the thumbnails' size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from imgtrain.core.hashing import image_digest
from imgtrain.data.dataset import Split

THUMB = 32  # pixels: thumbnails at most this side (MNIST's 28x28 stay as they are)


@dataclass
class PixelFacts:
    rows: np.ndarray  # rows of the split that decoded
    hashes: list[str]  # image_digest of each image (its decoded pixels and shape)
    thumbs: np.ndarray  # (n, t, t) float16, each standardised to mean 0 and standard deviation 1 (0 if constant)
    mean: np.ndarray  # mean pixel 0-255 (all channels)
    std: np.ndarray  # standard deviation of the pixels 0-255


def _batches(split: Split, shape: tuple[int, ...], batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if split.in_memory:
        x = cast(np.ndarray, split.x)
        for i in range(0, len(x), batch):
            yield x[i : i + batch], np.arange(i, min(i + batch, len(x)))
        return
    from imgtrain.data.stream import ImageBatches

    batches = ImageBatches(split, shape, batch, labels=False)
    for b in range(len(batches)):
        images, keep = batches.decode_batch(b)
        if images is not None:
            yield images, keep


def thumbnails(x: np.ndarray) -> np.ndarray:
    """(n, t, t) float32 grayscale, box-averaged down to THUMB pixels a side, standardised per image."""
    gray = x.astype(np.float32).mean(axis=3)
    h, w = gray.shape[1:]
    if max(h, w) > THUMB:  # box average over whole blocks: enough to compare images of one dataset with each other
        fy, fx = -(-h // THUMB), -(-w // THUMB)
        gray = np.pad(gray, ((0, 0), (0, fy * THUMB - h), (0, fx * THUMB - w)), mode="edge")
        gray = gray.reshape(len(gray), THUMB, fy, THUMB, fx).mean(axis=(2, 4))
    centred = gray - gray.mean(axis=(1, 2), keepdims=True)
    scale = centred.std(axis=(1, 2), keepdims=True)
    out: np.ndarray = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-3)
    return out


def pixel_facts(split: Split, shape: tuple[int, ...], batch: int = 1024) -> PixelFacts:
    rows, hashes, thumbs, mean, std = [], [], [], [], []
    for x, keep in _batches(split, shape, batch):
        rows.append(keep)
        hashes += [image_digest(img) for img in x]
        thumbs.append(thumbnails(x).astype(np.float16))
        flat = x.reshape(len(x), -1).astype(np.float32)
        mean.append(flat.mean(axis=1))
        std.append(flat.std(axis=1))
    if not rows:
        t = min(THUMB, shape[0])
        return PixelFacts(np.zeros(0, np.int64), [], np.zeros((0, t, t), np.float16), np.zeros(0), np.zeros(0))
    return PixelFacts(np.concatenate(rows), hashes, np.concatenate(thumbs), np.concatenate(mean), np.concatenate(std))


def best_correlation(thumbs: np.ndarray, pairs: np.ndarray, shift: int = 2, chunk: int = 4096) -> np.ndarray:
    """For each pair (i, j) of standardised thumbnails: the highest correlation (1: the same picture up to
    brightness and contrast) over shifts of j's by up to `shift` pixels each way (a copy moved by a pixel or two).
    Gathered a chunk at a time: 265,000 MNIST pairs at once would take 0.8 GB."""
    out = np.empty(len(pairs), np.float32)
    for i in range(0, len(pairs), chunk):
        part = pairs[i : i + chunk]
        x, y = thumbs[part[:, 0]].astype(np.float32), thumbs[part[:, 1]].astype(np.float32)
        best = np.full(len(x), -1.0, np.float32)
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                moved = np.roll(y, (dy, dx), axis=(1, 2))
                best = np.maximum(best, (x * moved).mean(axis=(1, 2)))
        out[i : i + chunk] = best
    return out
