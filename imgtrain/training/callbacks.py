"""Callbacks for what Keras' own lack: atomic best/last checkpoints with resume state, an atomic history.csv,
learning rate and epoch time in the logs, per-epoch seeds, a clean stop on Ctrl-C.

EarlyStopping and ReduceLROnPlateau are Keras' own, extended only so that their counters survive a resume;
TensorBoard and TerminateOnNaN are used as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import keras

from imgtrain.core.config import higher_is_better
from imgtrain.core.resources import process_age_s
from imgtrain.core.saving import atomic_write, save_model
from imgtrain.models.source import portable
from imgtrain.training.schedules import current_lr

if TYPE_CHECKING:
    from types import FrameType

    from imgtrain.core.config import TrainConfig

# Keras is untyped: its Callback classes are Any to mypy, hence the `type: ignore[misc]` on the classes below.


class EpochStats(keras.callbacks.Callback):  # type: ignore[misc]
    """Adds to the epoch logs, for history.csv: `learning_rate`, the rate of the epoch's first step (the rate a step
    decay trained the whole epoch with), `learning_rate_end`, the rate of its last step (a one-cycle or cosine
    schedule moves in between), and `epoch_seconds`."""

    stage: int | None = None  # the stage of a two-stage run (1, 2), logged as `stage`; None: a run of one stage

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()
        self._lr = current_lr(self.model.optimizer)  # before the epoch's first step

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            last_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
            logs["learning_rate"] = self._lr
            logs["learning_rate_end"] = current_lr(self.model.optimizer, max(last_step, 0))
            logs["epoch_seconds"] = time.perf_counter() - self._t0
            if self.stage is not None:
                logs["stage"] = self.stage


class StartupClock(keras.callbacks.Callback):  # type: ignore[misc]
    """When the run's first training step began (`startup_s`: imports, data, model, compile), counted from the
    process's start, or from `since` (a perf_counter time: a later run of the same process starts at its train()
    call), and how long that step took (`first_step_s`: it traces the train step)."""

    def __init__(self, since: float | None = None) -> None:
        super().__init__()
        self.timings: dict[str, float] = {}
        self.since = since

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if "startup_s" in self.timings:
            return
        age = process_age_s() if self.since is None else time.perf_counter() - self.since
        if age is not None:
            self.timings["startup_s"] = age
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if "first_step_s" not in self.timings and "startup_s" in self.timings:
            self.timings["first_step_s"] = time.perf_counter() - self._t0


class Pinned:
    """Mixin: the callback keeps the model it is pinned to (the run's whole model) when Keras hands it another one:
    a frozen stage on cached features fits only the head, but the checkpoints save, and the seeds reach, the whole
    model."""

    pin: keras.Model | None = None

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model if self.pin is None else self.pin)  # type: ignore[misc]  # the Callback after it


class TrackBest(keras.callbacks.Callback):  # type: ignore[misc]
    """Base: remembers the best value of `monitor` (max for accuracies, min for losses)."""

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if higher_is_better(monitor) else -1.0
        self.best = -math.inf
        self.best_epoch = -1

    def improved(self, epoch: int, logs: dict[str, Any] | None) -> bool:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or not math.isfinite((logs or {}).get("loss", 0.0)):
            return False  # a diverged epoch can score a finite accuracy, but it is never "best"
        if self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch
            return True
        return False


class BestCheckpoint(Pinned, TrackBest):
    """Saves the model to `path` atomically whenever `monitor` improves (Keras' ModelCheckpoint writes in place)."""

    def __init__(self, path: Path, monitor: str, meta: dict[str, Any], stop: GracefulStop | None = None) -> None:
        super().__init__(monitor)
        self.path, self.meta, self.stop = Path(path), meta, stop

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stop is not None and self.stop.interrupted:
            return  # an unfinished epoch is never "best"
        if self.improved(epoch, logs):
            logs = cast("dict[str, Any]", logs)  # improved: the logs hold the monitored value
            # a model from Python is saved as a plain Functional model: best.keras opens without the user's class
            save_model(
                portable(self.model), self.path, {**self.meta, "epoch": epoch + 1, self.monitor: logs[self.monitor]}
            )


class LastCheckpoint(Pinned, keras.callbacks.Callback):  # type: ignore[misc]
    """Saves the model (with its optimizer) to `path` atomically at the end of every completed epoch, with
    `state(epoch, logs)` inside the same file: what a resume needs, never out of step with the weights."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        state: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
        stop: GracefulStop | None = None,
    ) -> None:
        super().__init__()
        self.path, self.meta, self.state, self.stop = Path(path), meta, state, stop

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not math.isfinite((logs or {}).get("loss", 0.0)):
            return  # a diverged model never replaces the last good one
        if self.stop is not None and self.stop.interrupted:
            return  # the epoch did not finish
        # Keras passes an epoch's logs to on_epoch_end (`state` reads them)
        extra = {"resume": self.state(epoch, cast("dict[str, Any]", logs))} if self.state else {}
        save_model(self.model, self.path, {**self.meta, "epoch": epoch + 1, **extra})


def seed_generators(model: keras.layers.Layer) -> list[keras.random.SeedGenerator]:
    """Every keras.random.SeedGenerator the model's layers hold (dropout masks, augmentation draws); for a layer
    that is not a model, its own and its sublayers'."""
    found: list[keras.random.SeedGenerator] = []
    stack = list(getattr(model, "layers", None) or [model])
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []) or [])
        found += [v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator)]
    return found


class EpochSeeds(Pinned, keras.callbacks.Callback):  # type: ignore[misc]
    """Reseeds every SeedGenerator from (seed, epoch, position) at the start of each epoch, so the random draws of
    epoch k are the same whether the run got there in one go or was resumed."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        import numpy as np

        for i, gen in enumerate(seed_generators(self.model)):
            value = np.random.default_rng([self.seed, epoch, i]).integers(1, 2**31 - 1)
            gen.state.assign(np.array([value, 0]).astype(gen.state.dtype))


class GracefulStop(keras.callbacks.Callback):  # type: ignore[misc]
    """Ctrl-C (SIGINT) or SIGTERM stops training at the end of the current batch; the unfinished epoch is not
    checkpointed, so the run resumes from the last completed one."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False
        self._previous: dict[int, Any] = {}  # signal -> the handler it had before

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.interrupted:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Resumable:
    """Mixin for a Keras callback whose counters (`KEYS`) are saved with the checkpoint and put back on resume."""

    KEYS: tuple[str, ...] = ()

    def __init__(self, *args: Any, restore: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.restore = restore or {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Keras resets the counters here; the restored ones then win
        super().on_train_begin(logs)  # type: ignore[misc]  # the Keras callback after it in the MRO
        self.__dict__.update(self.restore)

    def snapshot(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


class ResumableEarlyStopping(Resumable, keras.callbacks.EarlyStopping):  # type: ignore[misc]
    """Keras' EarlyStopping whose patience count and best value survive a resume."""

    KEYS = ("wait", "best", "best_epoch")


class ResumablePlateau(Resumable, keras.callbacks.ReduceLROnPlateau):  # type: ignore[misc]
    """Keras' ReduceLROnPlateau whose wait, cooldown and best value survive a resume."""

    KEYS = ("wait", "best", "cooldown_counter")


class HistoryFile(keras.callbacks.Callback):  # type: ignore[misc]
    """Rewrites history.csv atomically after each epoch from `rows`, the completed epochs the last checkpoint
    recorded (Keras' CSVLogger appends in place, which a kill can leave half-written or ahead of the checkpoint)."""

    def __init__(self, path: Path, rows: list[dict[str, float]]) -> None:
        super().__init__()
        self.path, self.rows = Path(path), rows

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.rows:
            keys = sorted({k for r in self.rows for k in r} - {"epoch"})
            lines = [",".join(["epoch", *keys])]
            lines += [",".join([str(r["epoch"]), *(repr(r.get(k, "")) for k in keys)]) for r in self.rows]
            atomic_write(self.path, "\n".join(lines) + "\n")


STATE_FORMAT = 1  # version of the resume state stored inside last.keras


def run_callbacks(
    cfg: TrainConfig,
    model: keras.Model,
    run_dir: Path,
    meta: dict[str, Any],
    resume: dict[str, Any] | None,
    chief: bool,
    extra: list[keras.callbacks.Callback],
    since: float | None = None,
) -> tuple[list[keras.callbacks.Callback], GracefulStop, list[dict[str, float]]]:
    """(the callbacks of a run, in order; its GracefulStop; `rows`, every completed epoch's logs of the run's whole
    life, as last.keras records them). Every process runs the callbacks that steer training (all see the same
    metrics); only process 0 (`chief`) gets those that write files. `extra` runs after the steering ones and before
    the writers, so that a checkpoint records a stop that `extra` made. `since`: see StartupClock."""
    rows: list[dict[str, float]] = list(resume["history"]) if resume else []
    restored = (resume or {}).get("callbacks", {})
    stop = GracefulStop()
    best_cb = BestCheckpoint(run_dir / "best.keras", cfg.monitor, meta, stop)
    if "best" in restored:
        best_cb.best, best_cb.best_epoch = restored["best"]
    early = (
        ResumableEarlyStopping(
            cfg.monitor, patience=cfg.early_stopping, verbose=1, restore=restored.get("early_stopping")
        )
        if cfg.early_stopping
        else None
    )
    plateau = (
        ResumablePlateau(
            cfg.monitor,
            factor=cfg.reduce_lr_factor,
            patience=cfg.reduce_lr_patience,
            min_lr=cfg.min_lr,
            restore=restored.get("plateau"),
        )
        if cfg.reduce_lr_patience
        else None
    )

    def state(epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        snap: dict[str, Any] = {"best": [best_cb.best, best_cb.best_epoch]}
        if early:
            snap["early_stopping"] = early.snapshot()
        if plateau:
            snap["plateau"] = plateau.snapshot()
        # early stopping has ended the run: it stops the model being fit (the head alone, in a cached frozen stage)
        stopped = bool(model.stop_training or (early and early.model.stop_training))
        return {"format": STATE_FORMAT, "epoch": epoch + 1, "history": rows, "callbacks": snap, "stopped": stopped}

    writers: list[keras.callbacks.Callback] = [
        best_cb,
        LastCheckpoint(run_dir / "last.keras", meta, state, stop),  # after every callback it snapshots
        HistoryFile(run_dir / "history.csv", rows),
    ]  # rows as the checkpoint recorded them
    if cfg.tensorboard:
        writers.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, profile_batch=0))
    steer = [
        keras.callbacks.TerminateOnNaN(),
        stop,
        StartupClock(since),
        EpochSeeds(cfg.seed),
        EpochStats(),
        *[c for c in (early, plateau) if c],
    ]
    from imgtrain.analysis.notebook import in_notebook, make_live_progress

    if chief and cfg.verbose == "auto" and in_notebook():
        writers.append(make_live_progress())  # Keras' own progress is off there (train.progress_mode)
    return [*steer, *extra, *(writers if chief else [])], stop, rows
