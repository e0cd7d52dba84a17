"""In-memory batches in an order that depends only on (seed, epoch), so a resumed run sees what an uninterrupted
one would have seen. Keras' own array shuffling draws from a generator whose state a new process cannot restore."""

from __future__ import annotations

import keras
import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class ArrayBatches(keras.utils.PyDataset):  # type: ignore[misc]  # Keras has no type information: Any
    """(x, y) batches of arrays, reshuffled at each epoch from (seed, epoch); `epoch` is the next epoch to serve.
    `shuffle=False` serves the rows in their order (a validation split).

    Data-parallel runs: `shard=(p, n)` serves process p's n-th of every global batch, and the last batch is trimmed
    to a `multiple` of the device count, so that every process takes the same number of steps of equal size."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        *,
        shuffle: bool = True,
        shard: tuple[int, int] = (0, 1),
        multiple: int = 1,
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)  # in order, in this thread: the order is the point
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.shuffle, self.shard, self.multiple = shuffle, shard, multiple
        self.epoch = epoch
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return epoch_order(len(self.x), self.seed, self.epoch) if self.shuffle else np.arange(len(self.x))

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full + int(rest >= self.multiple)

    @property
    def rows_per_pass(self) -> int:
        """Images served per epoch (all of them, unless the last batch is trimmed)."""
        rest = len(self.x) % self.batch_size
        return len(self.x) - rest % self.multiple

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        rows = np.sort(rows[: len(rows) - len(rows) % self.multiple])  # sorted: faster gathers
        p, n = self.shard
        part = len(rows) // n
        idx = rows[p * part : (p + 1) * part]
        return self.x[idx], self.y[idx]

    def start_at(self, epoch: int) -> None:
        """Serve epoch `epoch` next (a fit call that starts at it: a resumed run, a run's second stage)."""
        self.epoch = epoch
        self.order = self._order()

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)
