"""Optimizers and learning-rate schedules, built only from Keras' own serialisable classes.

Using Keras' built-in schedules keeps every saved model loadable by plain `keras.models.load_model`.
"""
from __future__ import annotations

import keras

from .config import TrainConfig

ONECYCLE_START_DIV = 25.0  # one-cycle warm-up starts at peak/25 (fastai's div)
ONECYCLE_END_FRACTION = 1e-4  # and anneals to peak * 1e-4


def peak_lr(cfg: TrainConfig) -> float:
    """`learning_rate`, scaled with the global batch when `lr_scaling` asks: linear (Goyal et al. 2017, with the
    warm-up of onecycle) or square root. The batch is global, so the number of processes never changes it."""
    ratio = cfg.batch_size / cfg.lr_base_batch
    return cfg.learning_rate * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[cfg.lr_scaling]


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    lr = peak_lr(cfg)
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=cfg.step_epochs * steps_per_epoch, decay_rate=cfg.step_gamma, staircase=True)
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    warm = int(round(total * cfg.warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(  # linear warm-up to the peak, then cosine annealing
        lr / ONECYCLE_START_DIV, decay_steps=max(1, total - warm), alpha=ONECYCLE_END_FRACTION,
        warmup_target=lr if warm else None, warmup_steps=warm)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, lr=None) -> keras.optimizers.Optimizer:
    """The config's optimizer with its schedule, or with `lr` (a float or schedule) when given."""
    lr = make_schedule(cfg, steps_per_epoch) if lr is None else lr
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay or None)
    return keras.optimizers.RMSprop(lr, momentum=cfg.momentum if cfg.momentum else 0.0)


def current_lr(optimizer, step: int | None = None) -> float:
    """The rate the optimizer uses at `step` (default: the step it takes next)."""
    schedule = optimizer._learning_rate
    if step is not None and isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
