"""In-memory batches in an order that depends only on (seed, epoch), so a resumed run sees what an uninterrupted
one would have seen. Keras' own array shuffling draws from a generator whose state a new process cannot restore."""
from __future__ import annotations

import math

import keras
import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class ArrayBatches(keras.utils.PyDataset):
    """(x, y) batches of arrays, reshuffled at each epoch from (seed, epoch); `epoch` is the next epoch to serve."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)  # in order, in this thread: the order is the point
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = epoch
        self.order = epoch_order(len(x), seed, epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])  # sorted: faster gathers
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = epoch_order(len(self.x), self.seed, self.epoch)
