"""The data contract every loader returns and every trainer, evaluator and report reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from imgtrain.core.figures import Figure


@dataclass
class Split:
    """Integer labels `y` with images either in memory (`x`, uint8 N×H×W×C) or as files (`paths`) decoded per batch."""

    y: np.ndarray
    x: np.ndarray | None = None
    paths: list[str] | None = None
    # each row's position in the split as the dataset ships it (MNIST's test set in its published order); None: the
    # rows are that order. Subsets (limits, classes, folds, the validation carve) keep it, so that an audit's rows
    # and a decisions file name the same images.
    origin: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if (self.x is None) == (self.paths is None):
            raise ValueError("a Split holds either arrays (x) or file paths, not both or neither")
        n = len(self.x) if self.x is not None else len(cast("list[str]", self.paths))  # one of them is set
        if n != len(self.y):
            raise ValueError(f"{n} images but {len(self.y)} labels")
        if self.origin is not None:
            self.origin = np.asarray(self.origin, dtype=np.int64)
            if len(self.origin) != n:
                raise ValueError(f"{n} images but {len(self.origin)} positions")

    @property
    def positions(self) -> np.ndarray:
        """Each row's position in the split as shipped."""
        return np.arange(len(self.y)) if self.origin is None else self.origin

    def __len__(self) -> int:
        return len(self.y)

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def take(self, idx: np.ndarray) -> "Split":
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)  # a mask or positions
        if self.x is not None:
            return Split(self.y[idx], x=self.x[idx], origin=self.positions[idx])
        paths = cast("list[str]", self.paths)  # no arrays: files
        return Split(self.y[idx], paths=[paths[i] for i in idx], origin=self.positions[idx])

    def counts(self, num_classes: int) -> list[int]:
        counts: list[int] = np.bincount(self.y, minlength=num_classes).tolist()
        return counts


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    input_shape: tuple[int, int, int]  # (height, width, channels) of the uint8 images the model receives
    train: Split
    test: Split | None
    val: Split | None = None
    data_hash: str = ""  # sha256 of the source files (or of the file listing for folders and tables)
    source: str = ""  # where the data was read from
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason: files and class folders not used
    notes: list[str] = field(default_factory=list)
    # file datasets: each split's files as listed, the order of Split.positions (a row's file:
    # files[split][split_obj.positions[row]]); a split carved from train (test, val) points into files["train"]
    files: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what a run found wrong with the data (data/checks.py)
    # a decisions file applied (data/decisions.py): its path, sha256 and counts
    decisions: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def show_batch(self, n: int = 30, split: str = "train", cols: int = 10, seed: int = 0) -> Figure:
        """A grid of `n` random images of `split` with their class names: a matplotlib Figure, which a notebook
        shows."""
        from imgtrain.core.figures import samples
        from imgtrain.data.sample import random_images

        part = getattr(self, split)
        if part is None or not len(part):
            raise ValueError(f"dataset {self.name} has no {split} images")
        x, y = random_images(part, self.input_shape, n, seed)
        return samples(x, y, self.class_names, n=len(x), cols=cols, seed=seed)

    def summary(self) -> dict[str, Any]:
        """Plain data for run.json and reports."""
        splits = {k: getattr(self, k) for k in ("train", "val", "test")}
        return {
            "name": self.name,
            "source": self.source,
            "hash": self.data_hash,
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "counts": {k: (s.counts(self.num_classes) if s is not None else None) for k, s in splits.items()},
            "sizes": {k: (len(s) if s is not None else 0) for k, s in splits.items()},
            "streamed": not self.train.in_memory,
            "skipped": len(self.skipped),
            "skipped_files": dict(list(self.skipped.items())[:1000]),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            **({"decisions": dict(self.decisions)} if self.decisions else {}),
        }
