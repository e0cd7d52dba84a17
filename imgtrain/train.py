"""`train(config)`: one run, one directory. The loop is Keras' own `fit`; everything else is a callback.

A run directory holds: config.yaml (resolved config), run.json (versions, data summary and hash, timings,
status), history.csv, train.log, best.keras / last.keras (+ best.weights.h5, best.h5 when asked), metrics.json
(test metrics of the best model), predictions-test.npz, tensorboard/, and the report: report.html with
curves.png, samples.png, confusion.png, misclassified.png, per_class.png.
"""
from __future__ import annotations

import errno
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .backend import precision, use_backend
from .config import TrainConfig, higher_is_better, load_config, make_config
from .errors import ConfigError, ImgtrainError
from .resources import peak_rss_mib
from .rundir import choose_run_dir, make_run_dir, refuse_unfinished, run_logger, start_record
from .saving import atomic_write_json, weights_hash

@dataclass
class RunResult:
    run_dir: Path
    model: object  # keras.Model: the best checkpoint, reloaded from best.keras
    history: dict[str, list[float]]
    metrics: dict

    def show(self):
        """The run's report inline in a notebook (an HTML display object; elsewhere its repr names the file)."""
        from IPython.display import HTML

        from .notebook import report_frame

        return HTML(report_frame(self.run_dir))

    def _repr_html_(self) -> str:  # a notebook shows a run as its directory, test score and curves
        from .notebook import summary_html

        return summary_html(self)


def as_config(config, overrides: dict) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return make_config(**{**config.model_dump(), **overrides}) if overrides else config
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    return make_config(**{**(config or {}), **overrides})


def class_weights(spec, ds) -> dict[int, float] | None:
    if spec == "none":
        return None
    if spec == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(ds.train.y)
        weights = compute_class_weight("balanced", classes=present, y=ds.train.y)
        return {int(c): float(w) for c, w in zip(present, weights)}
    out = {}
    for key, w in spec.items():
        idx = ds.class_names.index(key) if key in ds.class_names else int(key) if str(key).isdigit() else None
        if idx is None or idx >= ds.num_classes:
            raise ConfigError(f"class_weight key {key!r} is not a class; classes: {', '.join(ds.class_names)}")
        out[idx] = float(w)
    return {i: out.get(i, 1.0) for i in range(ds.num_classes)}


def fit_inputs(split, cfg: TrainConfig, input_shape, onehot: int, shuffle: bool, skipped: dict, epoch: int = 0,
               sharding: dict | None = None):
    """Training batches in an order fixed by (seed, epoch), or the (x, y) arrays of a validation split.
    `sharding` (a data-parallel run, Cluster.sharding): this process's part of every batch, validation included."""
    if split.in_memory:
        from .data.batches import ArrayBatches

        y = np.eye(onehot, dtype=np.float32)[split.y] if onehot else split.y
        if shuffle or sharding:
            return ArrayBatches(split.x, y, cfg.batch_size, cfg.seed, epoch, shuffle=shuffle, **(sharding or {}))
        return split.x, y
    from .data.stream import ImageBatches  # makes its one-hot rows per batch

    # a data-parallel run decodes in fit's own thread: Keras' threaded prefetch made a killed and resumed run drift
    # from the uninterrupted one at the epoch after the kill (docs/distributed.md)
    return ImageBatches(split, input_shape, cfg.batch_size, shuffle=shuffle, seed=cfg.seed, onehot=onehot,
                        skipped=skipped, epoch=epoch, workers=1 if sharding else 2, **(sharding or {}))


def onehot_width(cfg: TrainConfig, num_classes: int) -> int:
    """Width of one-hot targets, or 0 for integer labels (label smoothing needs one-hot)."""
    return num_classes if (cfg.label_mode == "onehot" or cfg.label_smoothing > 0) else 0


def compile_model(model, cfg: TrainConfig, num_classes: int, optimizer) -> int:
    """Compile with the config's loss, accuracy metric and XLA setting; returns the one-hot width (0: sparse)."""
    import keras

    onehot = onehot_width(cfg, num_classes)
    if onehot:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        acc = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss, acc = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    jit = cfg.jit_compile if cfg.jit_compile is not None else (False if cfg.backend == "tensorflow" else "auto")
    model.compile(optimizer=optimizer, loss=loss, metrics=[acc], jit_compile=jit)
    return onehot


def progress_mode(cfg: TrainConfig) -> int:
    """Keras' verbose for fit: auto is a bar on a terminal, one line per epoch in a log, and nothing in a notebook,
    where callbacks.run_callbacks adds the live display instead."""
    if cfg.verbose == "auto":
        from .notebook import in_notebook

        return 0 if in_notebook() else 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "epoch": 2, "quiet": 0}[cfg.verbose]


def train(config: TrainConfig | dict | str | Path | None = None, *, callbacks: list | tuple = (),
          tracking_parent: str | None = None, **overrides) -> RunResult:
    """Train per `config` (a TrainConfig, a dict, or a YAML/TOML path; keyword overrides win). `callbacks`: more
    Keras callbacks, run after imgtrain's own that steer training and before those that save (`imgtrain tune`'s
    pruning stops a run there, and the checkpoint records it as ended). `tracking_parent`: with `track: mlflow`,
    the MLflow run this run is a child of (`imgtrain tune` makes one per search).

    `model` may also be a keras.Model built in Python (a subclass with its own train_step, say) or a function
    (input_shape, num_classes) -> keras.Model (custom.py); config.yaml then names it custom:<name>.

    With `distribute: data-parallel` every process of the job calls this with the same config; process 0 writes
    the run directory and returns the metrics, the others return their history and empty metrics."""
    from . import custom as built_in_python

    given = overrides.pop("model") if built_in_python.is_custom(overrides.get("model")) else None
    if given is not None:
        overrides["model"] = built_in_python.name_of(given)
    cfg = as_config(config, overrides)
    from .tracking import require

    require(cfg)  # track: mlflow without MLflow installed is one line, before anything is written
    use_backend(cfg.backend)
    from .transfer import resolve

    cfg = resolve(cfg)  # a pretrained start's defaults, recorded in config.yaml
    if given is not None:
        built_in_python.check(cfg, given)
    from .auto import resolve as resolve_precision, resolve_batch

    record = {"mlflow": {"parent_run_id": tracking_parent}} if tracking_parent else {}
    if cfg.distribute != "none":  # the global batch is fixed before the data are read
        cfg, record["batch_size"] = resolve_batch(cfg, None)
    import dataclasses

    from .batchnorm import fused_batchnorm
    from .distributed import join

    t_start = time.perf_counter()
    with fused_batchnorm(cfg.backend), join(cfg) as cluster:  # one process unless distribute
        # precision auto: this machine's choice, recorded in config.yaml; after joining, because asking JAX for
        # its devices before jax.distributed.initialize makes the join fail
        cfg, record["precision"] = resolve_precision(cluster.config, built_in_python.precision(cfg, given))
        with precision(cfg.precision):
            return _train(dataclasses.replace(cluster, config=cfg), t_start, list(callbacks), record, given)


def _train(cluster, t_start: float, extra: list, record: dict, given=None) -> RunResult:
    """`record`: what run.json says of how the run was set up (the precision and batch size chosen, and why).
    `given`: a model or builder from Python (custom.py), else None."""
    import dataclasses

    import keras

    from .auto import resolve_batch
    from .data import run_dataset
    from .distributed import agree
    from .transfer import initial_model

    cfg = cluster.config  # with the job's shape filled in
    run_dir, resume_from = choose_run_dir(cfg)
    keras.utils.set_random_seed(cfg.seed)
    ds = run_dataset(cfg)
    if "batch_size" not in record:  # auto: by the size of the training set, recorded in config.yaml
        cfg, record["batch_size"] = resolve_batch(cfg, len(ds.train))
        cluster = dataclasses.replace(cluster, config=cfg)
    if cfg.batch_size > len(ds.train):
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(ds.train)} training images; "
                          f"use at most {len(ds.train)}")
    if given is not None:
        from .custom import build, load_last

        model, origin = build(given, cfg, ds), None
    else:
        model, origin = initial_model(cfg, ds)
    weights = class_weights(cfg.class_weight, ds)  # checked before anything is written
    resume = None
    if resume_from is not None:
        from .callbacks import STATE_FORMAT
        from .saving import read_meta

        resume = read_meta(resume_from).get("resume")
        if not resume or resume.get("format") != STATE_FORMAT:
            raise ImgtrainError(f"{resume_from} has no resume state this version can read; remove it to start over")
        # weights and optimizer state (a model from Python: in its own class, whose train_step goes on)
        model = load_last(resume_from, model) if given is not None else \
            keras.models.load_model(resume_from, safe_mode=True)
    # every process must resume from the same epoch; the check also keeps process 0 from writing before all have read
    agree(cluster, "the epoch to resume from", resume["epoch"] if resume else 0)
    log = run_logger(make_run_dir(run_dir) if cluster.chief else None)
    try:
        return _fit_and_score(cluster, ds, model, weights, run_dir, log, t_start, resume, extra,
                              {**record, "init_from": origin} if origin else record)
    except OSError as err:
        log.error("stopped by %s: %s", type(err).__name__, err)
        if err.errno not in (errno.ENOSPC, errno.EFBIG):  # EFBIG: over a quota or the file-size limit (ulimit -f)
            raise
        raise ImgtrainError(f"disk full or file too large while writing {err.filename or run_dir}; every file "
                            f"already in {run_dir} is intact: free some space and run the same command to "
                            "resume") from None
    except BaseException as err:
        log.error("stopped by %s: %s", type(err).__name__, err)
        raise
    finally:
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()


def _log_data(ds, log: logging.Logger) -> None:
    log.info("data %s: train %d, val %d, test %d, input %s, %d classes, source %s", ds.name, len(ds.train),
             len(ds.val) if ds.val else 0, len(ds.test) if ds.test else 0, ds.input_shape, ds.num_classes, ds.source)
    for note in ds.notes:
        log.info("data: %s", note)
    for path, reason in ds.skipped.items():
        log.warning("skipped %s: %s", path, reason)


def _fit_data(cluster, ds, onehot: int, first: int, log: logging.Logger):
    """(training batches from epoch `first` on, validation data or None), with the data-parallel shape logged."""
    cfg = cluster.config
    train_data = fit_inputs(ds.train, cfg, ds.input_shape, onehot, True, ds.skipped, first, cluster.sharding)
    val = None
    if ds.val is not None and len(ds.val):
        val = fit_inputs(ds.val, cfg, ds.input_shape, onehot, False, ds.skipped, sharding=cluster.sharding)
    if cluster.sharding:
        log.info("data-parallel: %d processes, %d devices, global batch %d, %d rows per process and step",
                 cluster.num_processes, cluster.replicas, cfg.batch_size, cfg.batch_size // cluster.num_processes)
        for name, batches, split in (("train", train_data, ds.train), ("val", val, ds.val)):
            total = len(split) if split is not None else 0
            if batches is not None and batches.rows_per_pass < total:
                log.info("%s: %d of %d images a pass (the last batch trimmed to a multiple of %d devices)", name,
                         batches.rows_per_pass, total, cluster.replicas)
    return train_data, val


def _fit_and_score(cluster, ds, model, weights, run_dir: Path, log: logging.Logger,
                   t_start: float, resume: dict | None, extra: list, record: dict) -> RunResult:
    from .callbacks import StartupClock, run_callbacks
    from .distributed import undistributed
    from .tracking import epoch_callback
    from .stages import fit_stages
    from .schedules import peak_lr

    cfg, chief = cluster.config, cluster.chief
    t_data = time.perf_counter()
    _log_data(ds, log)
    onehot = onehot_width(cfg, ds.num_classes)
    first = resume["epoch"] if resume else 0
    train_data, val = _fit_data(cluster, ds, onehot, first, log)
    if cfg.lr_scaling != "none":
        log.info("learning rate: %g x (%d / %d)%s = %g", cfg.learning_rate, cfg.batch_size, cfg.lr_base_batch,
                 "^0.5" if cfg.lr_scaling == "sqrt" else "", peak_lr(cfg))
    if resume:
        log.info("resuming after epoch %d of %d from last.keras", resume["epoch"], cfg.epochs)
    meta = {"class_names": ds.class_names, "input_shape": list(ds.input_shape), "pixel_range": [0, 255],
            "dataset": cfg.dataset, "model": cfg.model}
    run_info = start_record(cluster, ds, model, run_dir, resume, record)
    log.info("precision %s: %s", record["precision"]["chosen"], record["precision"]["why"])
    if "init_from" in record:  # the model this run started from, with its file's hash
        origin = record["init_from"]
        log.info("started from %s (sha256 %s), head %s", origin["path"], origin["sha256"], origin["head"])
    tracker = _tracker(cfg, run_dir, run_info, chief, log)
    tracked = [epoch_callback(tracker)] if tracker.active else []
    callbacks, stop, rows = run_callbacks(cfg, model, run_dir, meta, resume, chief, [*extra, *tracked])
    # a run killed after early stopping ended it (while scoring, say) has nothing left to train
    last_epoch = first if (resume or {}).get("stopped") else cfg.epochs
    with tracker.ended_by_errors(lambda: stop.interrupted):
        fitted = fit_stages(cluster, ds, model, (train_data, val), callbacks, weights, first, last_epoch,
                            model.optimizer if resume else None, log)
        t_fit = time.perf_counter()
        run_info["timings"] = next(c.timings for c in callbacks if isinstance(c, StartupClock))
        losses = fitted.get("loss", [])
        refuse_unfinished(cluster, run_dir, run_info, stop.interrupted, rows, losses)
        if not chief:
            return RunResult(run_dir, model, fitted, {})
        with undistributed():  # process 0 alone: the best model, the test set and the report on its own devices
            result = _score(cfg, ds, model, run_dir, log, meta, rows, run_info, ds.skipped, losses,
                            (t_start, t_data, t_fit))
    tracker.finish(run_dir, result.metrics)
    return result


def _tracker(cfg: TrainConfig, run_dir: Path, run_info: dict, chief: bool, log: logging.Logger):
    """The run's MLflow tracker (one that does nothing unless `track: mlflow`, and on processes other than 0); what
    run.json keeps of it is written at once, so that a kill -9 resumes into the same MLflow run."""
    from .tracking import Tracker, start_run

    if cfg.track != "mlflow" or not chief:
        return Tracker()
    tracker = start_run(cfg, run_dir, run_info.get("mlflow"), log)
    run_info["mlflow"] = tracker.record
    atomic_write_json(run_dir / "run.json", run_info)
    if tracker.active:
        log.info("mlflow: run %s in experiment %r at %s", tracker.run_id, cfg.experiment, tracker.uri)
    return tracker


def _score(cfg: TrainConfig, ds, model, run_dir: Path, log: logging.Logger, meta: dict, rows: list[dict],
           run_info: dict, skipped: dict, losses: list, times: tuple) -> RunResult:
    """The best model's test metrics, predictions, run.json and the report (process 0 only). `times`: perf_counter
    at the start, after the data and after fit; run_info["timings"] may already hold the start-up clock's."""
    t_start, t_data, t_fit = times
    best = _best_model(cfg, model, run_dir, log, meta)
    metrics = {}
    if ds.test is not None and len(ds.test):
        from .evaluate import score_test

        metrics = score_test(best, ds.test, ds.class_names, run_dir, max(cfg.batch_size, 256), skipped, cfg.tta)
    hist = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}
    if cfg.monitor in hist:
        sign = 1 if higher_is_better(cfg.monitor) else -1
        best_epoch = int(np.argmax([sign * v for v in hist[cfg.monitor]]))
        metrics.update(best_epoch=best_epoch + 1, **{f"best_{k}": v[best_epoch] for k, v in hist.items()
                                                        if k.startswith("val_") or k in ("accuracy", "loss")})
    metrics["epochs_run"] = len(next(iter(hist.values()), []))
    metrics["weights_sha256"] = weights_hash(best)  # what `imgtrain replay` compares
    atomic_write_json(run_dir / "metrics.json", metrics)
    t_end = time.perf_counter()
    timings = run_info.setdefault("timings", {})
    timings.update(setup_s=t_data - t_start, fit_s=t_fit - t_data, evaluate_s=t_end - t_fit, total_s=t_end - t_start,
                   train_images_per_s=len(ds.train) * len(losses) / max(t_fit - t_data, 1e-9))
    run_info.update(status="done", finished=datetime.now().isoformat(timespec="seconds"), skipped=len(skipped),
                    data=ds.summary(), peak_rss_mib=peak_rss_mib())
    atomic_write_json(run_dir / "run.json", run_info)
    log.info("done: %s", {k: v for k, v in metrics.items() if k != "test"})
    if cfg.report:
        from .report import write_report

        spent = {}
        write_report(run_dir, ds, spent, best)
        timings.update(report_s=time.perf_counter() - t_end, heatmaps_s=spent.get("heatmaps_s", 0.0))
        atomic_write_json(run_dir / "run.json", run_info)  # with the report's own time
        log.info("report written in %.1f s (heatmaps %.1f s): %s", timings["report_s"], timings["heatmaps_s"],
                 run_dir / "report.html")
    return RunResult(run_dir, best, hist, metrics)


def _best_model(cfg: TrainConfig, model, run_dir: Path, log: logging.Logger, meta: dict):
    """best.keras loaded back (the last epoch's model when the monitored value never became finite), with
    best.weights.h5 (and best.h5 when asked) written beside it."""
    import keras

    from .custom import portable
    from .saving import save_model

    best_path = run_dir / "best.keras"
    if not best_path.exists():  # the monitored value never became finite: keep the last model as "best"
        log.warning("%s never improved; best.keras is the last epoch's model", cfg.monitor)
        save_model(portable(model), best_path, {**meta, "epoch": cfg.epochs})
    best = keras.models.load_model(best_path, safe_mode=True)
    save_model(best, run_dir / "best.weights.h5", meta)
    if cfg.save_h5:
        save_model(best, run_dir / "best.h5", meta)
    return best
