"""Batches decoded from image files on demand, for folders too large to hold decoded in memory."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import cast

import keras
import numpy as np

from imgtrain.core.errors import DataError
from imgtrain.data.batches import epoch_order
from imgtrain.data.dataset import Split
from imgtrain.data.images import try_decode


class ImageBatches(keras.utils.PyDataset):  # type: ignore[misc]  # Keras has no type information: Any
    """(x, y) or x batches from `split.paths`; undecodable files are dropped from their batch and recorded. A batch
    of only undecodable files borrows a good file from later in the split, which suits training; for predictions
    use `decode_batch`, which never borrows (`evaluate.predict_probs`).

    Data-parallel runs (as ArrayBatches): `shard=(p, n)` decodes only process p's n-th of every global batch, and
    the last batch is trimmed to a `multiple` of the device count. Every process must then feed the same number of
    rows at every step, so an undecodable file is replaced by the next good file of the split, not dropped."""

    def __init__(
        self,
        split: Split,
        input_shape: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        onehot: int = 0,
        labels: bool = True,
        skipped: dict[str, str] | None = None,
        workers: int = 2,
        epoch: int = 0,
        shard: tuple[int, int] | None = None,
        multiple: int = 1,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
        self.split, self.shape, self.batch_size = split, tuple(input_shape), batch_size
        self.shuffle, self.onehot, self.labels = shuffle, onehot, labels
        self.seed, self.epoch, self.shard, self.multiple = seed, epoch, shard, multiple
        self.order = epoch_order(len(split), seed, epoch) if shuffle else np.arange(len(split))
        self.skipped = skipped if skipped is not None else {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        if self.shard is None:
            return math.ceil(len(self.split) / self.batch_size)
        full, rest = divmod(len(self.split), self.batch_size)
        return full + int(rest >= self.multiple)

    @property
    def rows_per_pass(self) -> int:
        """Images served per epoch (all of them, unless the last batch is trimmed for the devices)."""
        return len(self.split) - (len(self.split) % self.batch_size) % (self.multiple if self.shard else 1)

    def _shard_rows(self, b: int) -> np.ndarray:
        """This process's positions of global batch `b`: its n-th of the batch trimmed to a multiple of devices."""
        rows = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        rows = np.sort(rows[: len(rows) - len(rows) % self.multiple])
        p, n = cast("tuple[int, int]", self.shard)  # called for a sharded split only
        part = len(rows) // n
        return rows[p * part : (p + 1) * part]

    def _load_or_next(self, i: int) -> tuple[np.ndarray, int]:
        """The image at position `i`, or the next decodable one after it (and its position)."""
        for step in range(len(self.split)):
            j = (i + step) % len(self.split)
            if (arr := self._load(j)) is not None:
                return arr, j
        raise DataError(f"none of the {len(self.split)} files of this split could be decoded")

    def _load(self, i: int) -> np.ndarray | None:
        paths = cast("list[str]", self.split.paths)  # a streamed split: files
        arr, reason = try_decode(paths[i], cast("tuple[int, int]", self.shape[:2]), self.shape[2])
        if reason is not None:
            with self._lock:
                self.skipped[paths[i]] = reason
        return arr

    def decode_batch(self, b: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(images or None when none decoded, their positions in the split) of batch `b`, undecodable files
        left out: what prediction needs, where every row must belong to the position it is reported for."""
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        images, keep = [], []
        for i in idx:
            if (arr := self._load(i)) is not None:
                images.append(arr)
                keep.append(i)
        return (np.stack(images) if images else None), np.array(keep, np.int64)

    def __getitem__(self, b: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        x: np.ndarray | None
        if self.shard is not None:  # a fixed number of rows: bad files replaced, never dropped
            loaded = [self._load_or_next(int(i)) for i in self._shard_rows(b)]
            x, keep = np.stack([a for a, _ in loaded]), np.array([j for _, j in loaded], np.int64)
            return self._labelled(x, keep)
        x, keep = self.decode_batch(b)
        if x is None:  # a batch of only bad files: borrow the next good one so the training step still has data
            last = self.order[b * self.batch_size : (b + 1) * self.batch_size][-1]
            arr, j = self._load_or_next((int(last) + 1) % len(self.split))
            x, keep = arr[None], np.array([j])
        return self._labelled(x, keep)

    def _labelled(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if not self.labels:
            return x
        y = self.split.y[keep]
        return (x, np.eye(self.onehot, dtype=np.float32)[y]) if self.onehot else (x, y)

    def start_at(self, epoch: int) -> None:
        """Serve epoch `epoch` next (a fit call that starts at it: a resumed run, a run's second stage)."""
        self.epoch = epoch
        if self.shuffle:
            self.order = epoch_order(len(self.split), self.seed, self.epoch)

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)
