"""The learning-rate range test (Leslie Smith; fastai's `lr_find`): train a fresh model for a few hundred batches
while the learning rate grows exponentially, record the loss of each batch, and suggest the rate where the
smoothed loss falls fastest. `imgtrain lr-find --config CFG` writes lr_find.png and lr_find.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.core.errors import ConfigError
from imgtrain.training.setup import ConfigLike, Prepared, prepare, setup

if TYPE_CHECKING:
    from imgtrain.core.figures import Figure

SMOOTHING = 0.95  # EMA of the batch loss, bias-corrected (fastai: 0.98, which lags far behind over 100-200 steps)
DIVERGED = 4.0  # stop once the smoothed loss exceeds 4x its best value


def batch_losses(running_means: list[float]) -> list[float]:
    """Keras 3 reports, after batch k, the mean loss of batches 1..k; the loss of batch k itself is
    k * mean_k - (k - 1) * mean_(k-1)."""
    out: list[float] = []
    prev = 0.0
    for k, mean in enumerate(running_means, start=1):
        out.append(k * mean - (k - 1) * prev)
        prev = mean
    return out


def smooth(losses: list[float], beta: float = SMOOTHING) -> np.ndarray:
    avg = 0.0
    out: list[float] = []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return np.array(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
    """'steepest': the rate where the smoothed loss falls fastest per decade of rate (skipping the first tenth,
    whose average is still settling); 'minimum_div10': a tenth of the rate at the lowest smoothed loss."""
    lo = max(1, len(lrs) // 10)
    grads = np.gradient(smoothed, np.log10(lrs))
    steep = lo + int(np.argmin(grads[lo:])) if len(lrs) > lo + 1 else 0
    return {"steepest": float(lrs[steep]), "minimum_div10": float(lrs[int(np.argmin(smoothed))] / 10)}


def lr_find(
    config: ConfigLike = None,
    start: float = 1e-6,
    end: float = 1.0,
    steps: int = 200,
    out: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the range test for `config` (as `train` takes it, `model=` from Python included); returns lrs, losses,
    smoothed and the suggestions, and writes lr_find.json / lr_find.png into `out` when given."""
    if not 0 < start < end:
        raise ConfigError(f"lr-find needs 0 < start < end (got start {start:g}, end {end:g})")
    with setup(config, overrides) as s:
        run = prepare(s, writes=False, val_split=0.0, test_limit=1)
        result = _sweep(run, start, end, steps)
    if out is not None:
        write(result, Path(out))
    return result


def _sweep(run: Prepared, start: float, end: float, steps: int) -> dict[str, Any]:
    import keras

    from imgtrain.training.fit import compile_model, fit_inputs
    from imgtrain.training.schedules import make_optimizer

    cfg, ds, model = run.config, run.data, run.model
    rate = keras.optimizers.schedules.ExponentialDecay(start, decay_steps=1, decay_rate=(end / start) ** (1 / steps))
    onehot = compile_model(model, cfg, ds.num_classes, make_optimizer(cfg, 1, lr=rate))
    batches = fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, {})
    means: list[float | None] = []

    class Record(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped: Callback is Any
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            means.append(None)  # running means restart each epoch

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            means.append(float(cast("dict[str, Any]", logs)["loss"]))  # Keras passes each batch's logs
            losses = _losses(means)
            if len(losses) >= steps or not math.isfinite(losses[-1]):
                self.model.stop_training = True
            elif len(losses) > 10:
                sm = smooth(losses)
                if sm[-1] > DIVERGED * sm.min():
                    self.model.stop_training = True

    epochs = math.ceil(steps / len(batches))
    model.fit(batches, epochs=epochs, shuffle=False, verbose=0, callbacks=[Record()])
    losses = [v for v in _losses(means) if math.isfinite(v)]
    lrs = start * (end / start) ** (np.arange(len(losses)) / steps)
    smoothed = smooth(losses)
    return {
        "lrs": lrs.tolist(),
        "losses": losses,
        "smoothed": smoothed.tolist(),
        "suggestion": suggest(lrs, smoothed),
        "batch_size": cfg.batch_size,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "optimizer": cfg.optimizer,
    }


def _losses(means: list[float | None]) -> list[float]:
    """Per-batch losses from running means that restart at each None (epoch start)."""
    out: list[float] = []
    chunk: list[float] = []
    for m in means + [None]:
        if m is None:
            out += batch_losses(chunk)
            chunk = []
        else:
            chunk.append(m)
    return out


def plot(result: dict[str, Any]) -> Figure:
    from imgtrain.core.figures import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=0.8, label="batch loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", lw=1.8, label="smoothed")
    s = result["suggestion"]
    ax.axvline(s["steepest"], color="C3", ls="--", label=f"steepest {s['steepest']:.2g}")
    ax.axvline(s["minimum_div10"], color="C2", ls=":", label=f"minimum/10 {s['minimum_div10']:.2g}")
    ax.set_xscale("log")
    top = np.percentile(result["smoothed"], 95) if result["smoothed"] else 1
    ax.set_ylim(min(result["losses"] or [0]) * 0.9, max(top, result["smoothed"][0] if result["smoothed"] else 1) * 1.2)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(
        f"LR range test: {result['model']} on {result['dataset']}, {result['optimizer']}, batch {result['batch_size']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write(result: dict[str, Any], out: Path) -> None:
    from imgtrain.core.figures import png_bytes
    from imgtrain.core.saving import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "lr_find.json", result)
    atomic_write(out / "lr_find.png", png_bytes(plot(result)))
