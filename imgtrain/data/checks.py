"""What a run can see of its data cheaply and should say (report.html's Data section, train.log): test images that
are exact copies of training images (in-memory data; `imgtrain audit` finds near copies and label issues too) and
classes with very few training images."""

from __future__ import annotations

from typing import cast

import numpy as np

from imgtrain.core.hashing import image_digest
from imgtrain.data.dataset import Dataset, Split

FEW = 10  # training images: a class with fewer, or with under a tenth of the median class, is called out


def _hashes(split: Split) -> set[str]:
    return {image_digest(img) for img in cast(np.ndarray, split.x)}


def data_warnings(ds: Dataset) -> list[str]:
    out = []
    counts = np.bincount(ds.train.y, minlength=ds.num_classes)
    median = float(np.median(counts))
    few = [(n, int(c)) for n, c in zip(ds.class_names, counts) if c < max(FEW, median / 10)]
    if few:
        listed = ", ".join(f"{n!r} {c}" for n, c in few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")
        out.append(f"classes with very few training images (median {median:,.0f}): {listed}")
    if ds.test is not None and ds.test.in_memory and ds.train.in_memory and len(ds.test):
        seen = _hashes(ds.train) | (_hashes(ds.val) if ds.val is not None and ds.val.in_memory else set())
        copies = sum(image_digest(img) in seen for img in cast(np.ndarray, ds.test.x))
        if copies:
            out.append(
                f"{copies:,} test image{'s are exact copies' if copies > 1 else ' is an exact copy'} of training "
                "images: the test score counts them (imgtrain audit finds near copies as well)"
            )
    return out
