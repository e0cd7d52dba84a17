"""Callbacks for what Keras' own lack: atomic best/last checkpoints, learning rate and epoch time in the logs.

EarlyStopping, ReduceLROnPlateau, CSVLogger and TensorBoard are Keras' own and are used as they are.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from .saving import save_model
from .schedules import current_lr


class EpochStats(keras.callbacks.Callback):
    """Adds `learning_rate` (at the end of the epoch) and `epoch_seconds` to the epoch logs, for history.csv."""

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_lr(self.model.optimizer)
            logs["epoch_seconds"] = time.perf_counter() - self._t0


class TrackBest(keras.callbacks.Callback):
    """Base: remembers the best value of `monitor` (max for accuracies, min for losses)."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if "acc" in monitor else -1.0
        self.best = -math.inf
        self.best_epoch = -1

    def improved(self, epoch: int, logs) -> bool:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or not math.isfinite((logs or {}).get("loss", 0.0)):
            return False  # a diverged epoch can score a finite accuracy, but it is never "best"
        if self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch
            return True
        return False


class BestCheckpoint(TrackBest):
    """Saves the model to `path` atomically whenever `monitor` improves (Keras' ModelCheckpoint writes in place)."""

    def __init__(self, path: Path, monitor: str, meta: dict):
        super().__init__(monitor)
        self.path, self.meta = Path(path), meta

    def on_epoch_end(self, epoch, logs=None):
        if self.improved(epoch, logs):
            save_model(self.model, self.path, {**self.meta, "epoch": epoch + 1, self.monitor: logs[self.monitor]})


class LastCheckpoint(keras.callbacks.Callback):
    """Saves the model to `path` atomically at the end of every epoch."""

    def __init__(self, path: Path, meta: dict):
        super().__init__()
        self.path, self.meta = Path(path), meta

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            return  # a diverged model never replaces the last good one
        save_model(self.model, self.path, {**self.meta, "epoch": epoch + 1})
