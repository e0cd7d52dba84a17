"""The learning-rate range test (Leslie Smith; fastai's `lr_find`): train a fresh model for a few hundred batches
while the learning rate grows exponentially, record the loss of each batch, and suggest the rate where the
smoothed loss falls fastest. `imgtrain lr-find --config CFG` writes lr_find.png and lr_find.json.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SMOOTHING = 0.95  # EMA of the batch loss, bias-corrected (fastai: 0.98, which lags far behind over 100-200 steps)
DIVERGED = 4.0  # stop once the smoothed loss exceeds 4x its best value


def batch_losses(running_means: list[float]) -> list[float]:
    """Keras 3 reports, after batch k, the mean loss of batches 1..k; the loss of batch k itself is
    k * mean_k - (k - 1) * mean_(k-1)."""
    out, prev = [], 0.0
    for k, mean in enumerate(running_means, start=1):
        out.append(k * mean - (k - 1) * prev)
        prev = mean
    return out


def smooth(losses: list[float], beta: float = SMOOTHING) -> np.ndarray:
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return np.array(out)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
    """'steepest': the rate where the smoothed loss falls fastest per decade of rate (skipping the first tenth,
    whose average is still settling); 'minimum_div10': a tenth of the rate at the lowest smoothed loss."""
    lo = max(1, len(lrs) // 10)
    grads = np.gradient(smoothed, np.log10(lrs))
    steep = lo + int(np.argmin(grads[lo:])) if len(lrs) > lo + 1 else 0
    return {"steepest": float(lrs[steep]), "minimum_div10": float(lrs[int(np.argmin(smoothed))] / 10)}


def lr_find(config=None, start: float = 1e-6, end: float = 1.0, steps: int = 200, out: str | Path | None = None,
            **overrides) -> dict:
    """Run the range test for `config` (as `train` takes it); returns lrs, losses, smoothed and the suggestions,
    and writes lr_find.json / lr_find.png into `out` when given."""
    from .backend import precision, use_backend
    from .train import as_config

    cfg = as_config(config, overrides)
    if not 0 < start < end:
        from .errors import ConfigError

        raise ConfigError(f"lr-find needs 0 < start < end (got start {start:g}, end {end:g})")
    use_backend(cfg.backend)
    from .batchnorm import fused_batchnorm
    from .auto import resolve as resolve_precision
    from .transfer import resolve

    cfg, _ = resolve_precision(resolve(cfg))
    with precision(cfg.precision), fused_batchnorm(cfg.backend):
        return _lr_find(cfg, start, end, steps, out)


def _lr_find(cfg, start: float, end: float, steps: int, out) -> dict:
    import keras

    from .data import run_dataset
    from .schedules import make_optimizer
    from .train import compile_model, fit_inputs
    from .transfer import initial_model

    keras.utils.set_random_seed(cfg.seed)
    ds = run_dataset(cfg, val_split=0.0, test_limit=1)
    from .auto import resolve_batch

    cfg, _ = resolve_batch(cfg, len(ds.train))
    model, _ = initial_model(cfg, ds)
    rate = keras.optimizers.schedules.ExponentialDecay(start, decay_steps=1, decay_rate=(end / start) ** (1 / steps))
    onehot = compile_model(model, cfg, ds.num_classes, make_optimizer(cfg, 1, lr=rate))
    batches = fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, {})
    means: list[float] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            means.append(None)  # running means restart each epoch

        def on_train_batch_end(self, batch, logs=None):
            means.append(float(logs["loss"]))
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
    result = {"lrs": lrs.tolist(), "losses": losses, "smoothed": smoothed.tolist(),
              "suggestion": suggest(lrs, smoothed), "batch_size": cfg.batch_size, "model": cfg.model,
              "dataset": cfg.dataset, "optimizer": cfg.optimizer}
    if out is not None:
        write(result, Path(out))
    return result


def _losses(means: list) -> list[float]:
    """Per-batch losses from running means that restart at each None (epoch start)."""
    out, chunk = [], []
    for m in means + [None]:
        if m is None:
            out += batch_losses(chunk)
            chunk = []
        else:
            chunk.append(m)
    return out


def plot(result: dict):
    from .plots import Figure

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
    ax.set_title(f"LR range test: {result['model']} on {result['dataset']}, {result['optimizer']}, "
                 f"batch {result['batch_size']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write(result: dict, out: Path) -> None:
    from .plots import png_bytes
    from .saving import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "lr_find.json", result)
    atomic_write(out / "lr_find.png", png_bytes(plot(result)))
