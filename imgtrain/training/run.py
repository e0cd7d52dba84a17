"""`train(config)`: one run, one directory. The loop is Keras' own `fit`; everything else is a callback.

A run directory holds: config.yaml (resolved config), run.json (versions, data summary and hash, timings,
status), history.csv, train.log, best.keras / last.keras (+ best.weights.h5, best.h5 when asked), metrics.json
(test metrics of the best model), predictions-test.npz, tensorboard/, and the report: report.html with
curves.png, samples.png, confusion.png, misclassified.png, per_class.png.
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.core.config import TrainConfig, higher_is_better
from imgtrain.core.errors import ImgtrainError
from imgtrain.core.resources import peak_rss_mib
from imgtrain.core.saving import atomic_write_json, weights_hash
from imgtrain.training.fit import class_weights, fit_inputs, onehot_width
from imgtrain.training.rundir import end_run_logger, make_run_dir, refuse_unfinished, run_logger, start_record
from imgtrain.training.setup import Prepared, prepare, setup

if TYPE_CHECKING:
    import keras

    from imgtrain.data.dataset import Dataset
    from imgtrain.training.cluster import Cluster
    from imgtrain.training.stages import Batches, ValData
    from imgtrain.training.tracking import Tracker


@dataclass
class RunResult:
    run_dir: Path
    model: keras.Model  # the best checkpoint, reloaded from best.keras
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    chief: bool = True  # False in a data-parallel job's processes other than 0, which write nothing

    def show(self) -> Any:
        """The run's report inline in a notebook (an HTML display object; elsewhere its repr names the file)."""
        from imgtrain.core.extras import require

        require("notebook", "run.show()")
        from IPython.display import HTML as _HTML

        from imgtrain.analysis.notebook import report_frame

        HTML: Any = _HTML  # IPython's display classes are untyped
        return HTML(report_frame(self.run_dir))

    def _repr_html_(self) -> str:  # a notebook shows a run as its directory, test score and curves
        from imgtrain.analysis.notebook import summary_html

        return summary_html(self)


_RUNS = itertools.count()  # runs started in this process (startup_s of the first counts its imports)


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    callbacks: list[keras.callbacks.Callback] | tuple[keras.callbacks.Callback, ...] = (),
    tracking_parent: str | None = None,
    **overrides: Any,
) -> RunResult:
    """Train per `config` (a TrainConfig, a dict, or a YAML/TOML path; keyword overrides win). `callbacks`: more
    Keras callbacks, run after imgtrain's own that steer training and before those that save (`imgtrain tune`'s
    pruning stops a run there, and the checkpoint records it as ended). `tracking_parent`: with `track: mlflow`,
    the MLflow run this run is a child of (`imgtrain tune` makes one per search).

    `model` may also be a keras.Model built in Python (a subclass with its own train_step, say) or a function
    (input_shape, num_classes) -> keras.Model (models/source.py); config.yaml then names it custom:<name>.

    With `distribute: data-parallel` every process of the job calls this with the same config; process 0 writes
    the run directory and returns the metrics, the others return their history and empty metrics."""
    t_start = time.perf_counter()
    with setup(config, overrides, tracking_parent) as s:
        run = prepare(s)
        weights = class_weights(run.config.class_weight, run.data)  # checked before anything is written
        assert run.run_dir is not None
        log = run_logger(make_run_dir(run.run_dir) if run.cluster.chief else None)
        try:
            return _fit_and_score(run, weights, log, t_start, list(callbacks))
        except OSError as err:
            log.error("stopped by %s: %s", type(err).__name__, err)
            if err.errno not in (errno.ENOSPC, errno.EFBIG):  # EFBIG: over a quota or the file-size limit (ulimit -f)
                raise
            raise ImgtrainError(
                f"disk full or file too large while writing {err.filename or run.run_dir}; every file "
                f"already in {run.run_dir} is intact: free some space and run the same command to resume"
            ) from err
        except BaseException as err:
            log.error("stopped by %s: %s", type(err).__name__, err)
            raise
        finally:
            end_run_logger(log)


def _log_data(ds: Dataset, log: logging.Logger) -> None:
    log.info(
        "data %s: train %d, val %d, test %d, input %s, %d classes, source %s",
        ds.name,
        len(ds.train),
        len(ds.val) if ds.val else 0,
        len(ds.test) if ds.test else 0,
        ds.input_shape,
        ds.num_classes,
        ds.source,
    )
    for note in ds.notes:
        log.info("data: %s", note)
    from imgtrain.data.checks import data_warnings

    ds.warnings = data_warnings(ds)
    for warning in ds.warnings:
        log.warning("data: %s", warning)
    for path, reason in ds.skipped.items():
        log.warning("skipped %s: %s", path, reason)


def _fit_data(cluster: Cluster, ds: Dataset, onehot: int, first: int, log: logging.Logger) -> tuple[Batches, ValData]:
    """(training batches from epoch `first` on, validation data or None), with the data-parallel shape logged."""
    cfg = cluster.config
    train_data = cast(  # shuffled: batches, never arrays
        "Batches", fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, ds.skipped, first, cluster.sharding)
    )
    val: ValData = None
    if ds.val is not None and len(ds.val):
        val = fit_inputs(ds.val, cfg, ds.input_shape, onehot, False, ds.skipped, sharding=cluster.sharding)
    if cluster.sharding:
        log.info(
            "data-parallel: %d processes, %d devices, global batch %d, %d rows per process and step",
            cluster.num_processes,
            cluster.replicas,
            cfg.batch_size,
            cast(int, cfg.batch_size) // cluster.num_processes,  # resolved: no `auto`
        )
        # sharded: the validation data are batches too, never arrays
        for name, batches, split in (("train", train_data, ds.train), ("val", cast("Batches | None", val), ds.val)):
            total = len(split) if split is not None else 0
            if batches is not None and batches.rows_per_pass < total:
                log.info(
                    "%s: %d of %d images a pass (the last batch trimmed to a multiple of %d devices)",
                    name,
                    batches.rows_per_pass,
                    total,
                    cluster.replicas,
                )
    return train_data, val


def _fit_and_score(
    run: Prepared,
    weights: dict[int, float] | None,
    log: logging.Logger,
    t_start: float,
    extra: list[keras.callbacks.Callback],
) -> RunResult:
    from imgtrain.training.callbacks import StartupClock, run_callbacks
    from imgtrain.training.schedules import peak_lr
    from imgtrain.training.stages import fit_stages
    from imgtrain.training.tracking import epoch_callback

    cluster, ds, model, run_dir, resume = run.cluster, run.data, run.model, run.run_dir, run.resume
    record = run.setup.record
    assert run_dir is not None
    cfg, chief = cluster.config, cluster.chief
    t_data = time.perf_counter()
    _log_data(ds, log)
    onehot = onehot_width(cfg, ds.num_classes)
    first = resume["epoch"] if resume else 0
    train_data, val = _fit_data(cluster, ds, onehot, first, log)
    if cfg.lr_scaling != "none":
        log.info(
            "learning rate: %g x (%d / %d)%s = %g",
            cfg.learning_rate,
            cfg.batch_size,
            cfg.lr_base_batch,
            "^0.5" if cfg.lr_scaling == "sqrt" else "",
            peak_lr(cfg),
        )
    if resume:
        log.info("resuming after epoch %d of %d from last.keras", resume["epoch"], cfg.epochs)
    meta = {
        "class_names": ds.class_names,
        "input_shape": list(ds.input_shape),
        "pixel_range": [0, 255],
        "dataset": cfg.dataset,
        "model": cfg.model,
    }
    run_info = start_record(cluster, ds, model, run_dir, resume, record)
    log.info("precision %s: %s", record["precision"]["chosen"], record["precision"]["why"])
    if "init_from" in record:  # the model this run started from, with its file's hash
        origin = record["init_from"]
        log.info("started from %s (sha256 %s), head %s", origin["path"], origin["sha256"], origin["head"])
    tracker = _tracker(cfg, run_dir, run_info, chief, log)
    tracked = [epoch_callback(tracker)] if tracker.active else []
    since = None if next(_RUNS) == 0 else t_start  # the process's first run counts its imports; a later one not
    callbacks, stop, rows = run_callbacks(cfg, model, run_dir, meta, resume, chief, [*extra, *tracked], since)
    # a run killed after early stopping ended it (while scoring, say) has nothing left to train
    last_epoch = first if (resume or {}).get("stopped") else cfg.epochs
    with tracker.ended_by_errors(lambda: stop.interrupted):
        fitted = fit_stages(
            cluster,
            ds,
            model,
            (train_data, val),
            callbacks,
            weights,
            first,
            last_epoch,
            model.optimizer if resume else None,
            log,
        )
        t_fit = time.perf_counter()
        run_info["timings"] = next(c.timings for c in callbacks if isinstance(c, StartupClock))
        losses = fitted.get("loss", [])
        refuse_unfinished(cluster, run_dir, run_info, stop.interrupted, rows, losses)
        if not chief:
            return RunResult(run_dir, model, fitted, {}, chief=False)
        with cluster.alone():  # process 0 alone: the best model, the test set and the report on its own devices
            best = _best_model(cfg, run.setup.source.portable(model), run_dir, log, meta)
            result = _score(cfg, ds, best, run_dir, log, rows, run_info, losses, (t_start, t_data, t_fit))
    tracker.finish(run_dir, result.metrics)
    return result


def _tracker(cfg: TrainConfig, run_dir: Path, run_info: dict[str, Any], chief: bool, log: logging.Logger) -> Tracker:
    """The run's MLflow tracker (one that does nothing unless `track: mlflow`, and on processes other than 0); what
    run.json keeps of it is written at once, so that a kill -9 resumes into the same MLflow run."""
    from imgtrain.training.tracking import Tracker, start_run

    if cfg.track != "mlflow" or not chief:
        return Tracker()
    tracker = start_run(cfg, run_dir, run_info.get("mlflow"), log)
    run_info["mlflow"] = tracker.record
    atomic_write_json(run_dir / "run.json", run_info)
    if tracker.active:
        log.info("mlflow: run %s in experiment %r at %s", tracker.run_id, cfg.experiment, tracker.uri)
    return tracker


def _score(
    cfg: TrainConfig,
    ds: Dataset,
    best: keras.Model,
    run_dir: Path,
    log: logging.Logger,
    rows: list[dict[str, float]],
    run_info: dict[str, Any],
    losses: list[float],
    times: tuple[float, float, float],
) -> RunResult:
    """The best model's test metrics, predictions, run.json and the report (process 0 only). `times`: perf_counter
    at the start, after the data and after fit; run_info["timings"] may already hold the start-up clock's."""
    t_start, t_data, t_fit = times
    skipped = ds.skipped
    metrics: dict[str, Any] = {}
    if ds.test is not None and len(ds.test):
        from imgtrain.analysis.evaluate import score_test

        batch_size = max(cast(int, cfg.batch_size), 256)  # resolved: no `auto`
        metrics = score_test(best, ds.test, ds.class_names, run_dir, batch_size, skipped, cfg.tta)
    hist = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}
    if cfg.monitor in hist:
        sign = 1 if higher_is_better(cfg.monitor) else -1
        best_epoch = int(np.argmax([sign * v for v in hist[cfg.monitor]]))
        metrics.update(
            best_epoch=best_epoch + 1,
            **{
                f"best_{k}": v[best_epoch] for k, v in hist.items() if k.startswith("val_") or k in ("accuracy", "loss")
            },
        )
    metrics["epochs_run"] = len(next(iter(hist.values()), []))
    metrics["weights_sha256"] = weights_hash(best)  # what `imgtrain replay` compares
    atomic_write_json(run_dir / "metrics.json", metrics)
    t_end = time.perf_counter()
    timings = run_info.setdefault("timings", {})
    timings.update(
        setup_s=t_data - t_start,
        fit_s=t_fit - t_data,
        evaluate_s=t_end - t_fit,
        total_s=t_end - t_start,
        train_images_per_s=len(ds.train) * len(losses) / max(t_fit - t_data, 1e-9),
    )
    run_info.update(
        status="done",
        finished=datetime.now().isoformat(timespec="seconds"),
        skipped=len(skipped),
        data=ds.summary(),
        peak_rss_mib=peak_rss_mib(),
    )
    atomic_write_json(run_dir / "run.json", run_info)
    log.info("done: %s", {k: v for k, v in metrics.items() if k != "test"})
    if cfg.report:
        from imgtrain.analysis.report import write_report

        spent: dict[str, float] = {}
        write_report(run_dir, ds, spent, best)
        timings.update(report_s=time.perf_counter() - t_end, heatmaps_s=spent.get("heatmaps_s", 0.0))
        atomic_write_json(run_dir / "run.json", run_info)  # with the report's own time
        log.info(
            "report written in %.1f s (heatmaps %.1f s): %s",
            timings["report_s"],
            timings["heatmaps_s"],
            run_dir / "report.html",
        )
    return RunResult(run_dir, best, hist, metrics)


def _best_model(
    cfg: TrainConfig, model: keras.Model, run_dir: Path, log: logging.Logger, meta: dict[str, Any]
) -> keras.Model:
    """best.keras loaded back (the last epoch's model, in its portable form, when the monitored value never became
    finite), with best.weights.h5 (and best.h5 when asked) written beside it."""
    import keras

    from imgtrain.core.saving import save_model

    best_path = run_dir / "best.keras"
    if not best_path.exists():  # the monitored value never became finite: keep the last model as "best"
        log.warning("%s never improved; best.keras is the last epoch's model", cfg.monitor)
        save_model(model, best_path, {**meta, "epoch": cfg.epochs})
    best = keras.models.load_model(best_path, safe_mode=True)
    save_model(best, run_dir / "best.weights.h5", meta)
    if cfg.save_h5:
        save_model(best, run_dir / "best.h5", meta)
    return best
