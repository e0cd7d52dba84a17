"""Optimizers and learning-rate schedules, built only from Keras' own serialisable classes.

Using Keras' built-in schedules keeps every saved model loadable by plain `keras.models.load_model`.
"""

from __future__ import annotations

from typing import Any, cast

import keras

from imgtrain.core.config import TrainConfig
from imgtrain.models import HEAD

ONECYCLE_START_DIV = 25.0  # one-cycle warm-up starts at peak/25 (fastai's div)
ONECYCLE_END_FRACTION = 1e-4  # and anneals to peak * 1e-4


def peak_lr(cfg: TrainConfig) -> float:
    """`learning_rate`, scaled with the global batch when `lr_scaling` asks: linear (Goyal et al. 2017, with the
    warm-up of onecycle) or square root. The batch is global, so the number of processes never changes it."""
    ratio = cast(int, cfg.batch_size) / cfg.lr_base_batch  # resolved by now: no `auto`
    scale: dict[str, float] = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}  # float ** float is Any to mypy
    return cfg.learning_rate * scale[cfg.lr_scaling]


def make_schedule(
    cfg: TrainConfig, steps_per_epoch: int, epochs: int | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate over `epochs` (default: the run's) of `steps_per_epoch` steps; a stage of a two-stage run
    has its own."""
    total = max(1, (cfg.epochs if epochs is None else epochs) * steps_per_epoch)
    lr = peak_lr(cfg)
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=cfg.step_epochs * steps_per_epoch, decay_rate=cfg.step_gamma, staircase=True
        )
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    warm = int(round(total * cfg.warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(  # linear warm-up to the peak, then cosine annealing
        lr / ONECYCLE_START_DIV,
        decay_steps=max(1, total - warm),
        alpha=ONECYCLE_END_FRACTION,
        warmup_target=lr if warm else None,
        warmup_steps=warm,
    )


def make_optimizer(
    cfg: TrainConfig,
    steps_per_epoch: int,
    lr: float | keras.optimizers.schedules.LearningRateSchedule | None = None,
    epochs: int | None = None,
    body_mult: float = 1.0,
) -> keras.optimizers.Optimizer:
    """The config's optimizer with its schedule over `epochs` (default: the run's), or with `lr` (a float or
    schedule) when given; `body_mult` != 1: every variable outside the head learns at that multiple of the rate."""
    lr = make_schedule(cfg, steps_per_epoch, epochs) if lr is None else lr
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(lr)
    elif cfg.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(
            lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay or None
        )
    else:
        opt = keras.optimizers.RMSprop(lr, momentum=cfg.momentum if cfg.momentum else 0.0)
    return opt if body_mult == 1.0 else with_body_rate(opt, body_mult)


def with_body_rate(optimizer: keras.optimizers.Optimizer, mult: float, head: str = HEAD) -> keras.optimizers.Optimizer:
    """`optimizer` whose updates of every variable outside the layer `head` use `mult` times the learning rate
    (discriminative rates: a pretrained body learns slower than the new head). Keras 3 has no per-variable rate;
    each update step of a Keras optimizer gets the rate as an argument, so the subclass scales it there.

    The subclass carries the name and module of the Keras class it extends, so a saved model's compile config
    names that plain class and opens in Keras without imgtrain (compiled with the head's rate); imgtrain re-applies
    the multiplier from the run's config when it resumes."""
    base: Any = type(optimizer)

    class BodyRate(base):  # type: ignore[misc]  # Keras is untyped: its optimizer classes are Any
        def build(self, variables: list[Any]) -> None:
            super().build(variables)
            self._body = {i for i, v in enumerate(variables) if not v.path.startswith(f"{head}/")}

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            if self._get_variable_index(variable) in self._body:
                learning_rate = learning_rate * mult
            return super().update_step(gradient, variable, learning_rate)

        def _apply_weight_decay(self, variables: list[Any]) -> None:
            """Decoupled weight decay (AdamW, SGD's) shrinks a variable by rate x decay each step: the body's at
            its own rate. Keras reads `weight_decay` while it traces the step, so the body's call sees it scaled."""
            body = [v for v in variables if self._get_variable_index(v) in self._body]
            super()._apply_weight_decay([v for v in variables if self._get_variable_index(v) not in self._body])
            decay: float | None = getattr(self, "weight_decay", None)
            if body and decay is not None:
                self.weight_decay = decay * mult
                try:
                    super()._apply_weight_decay(body)
                finally:
                    self.weight_decay = decay

    BodyRate.__name__ = BodyRate.__qualname__ = base.__name__
    BodyRate.__module__ = base.__module__
    return BodyRate.from_config(optimizer.get_config())


def restore_optimizer(
    optimizer: keras.optimizers.Optimizer, saved: keras.optimizers.Optimizer, variables: list[Any]
) -> None:
    """Give `optimizer` (built for `variables`) the state of `saved`, an optimizer of the same class read from a
    checkpoint: step count, moments, rate. Exact, so a resumed run continues bit for bit."""
    optimizer.build(variables)
    if len(optimizer.variables) != len(saved.variables):
        raise ValueError(
            f"the checkpoint's optimizer holds {len(saved.variables)} variables, this one {len(optimizer.variables)}"
        )
    for mine, theirs in zip(optimizer.variables, saved.variables):
        mine.assign(theirs)


def current_lr(optimizer: keras.optimizers.Optimizer, step: int | None = None) -> float:
    """The rate the optimizer uses at `step` (default: the step it takes next)."""
    schedule = optimizer._learning_rate
    if step is not None and isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
