"""MLflow tracking (`track: mlflow`): one MLflow run per imgtrain run, and for `imgtrain tune` a parent run with
each trial as a child run.

A run logs its config as params (nested keys dotted), every epoch's metrics (step = epoch, from 0), the test
metrics, and best.keras, report.html and the run's small files as artifacts; it is tagged with its run directory.
A resumed run goes on logging into the MLflow run it started (run.json keeps its id). Tracking never stops
training: a tracking server that cannot be reached, or any MLflow call that fails, is one warning line on stderr
and in train.log, and the run goes on without tracking.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlparse

from imgtrain.core.errors import ConfigError

if TYPE_CHECKING:
    import logging

    import keras
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from imgtrain.core.config import TrainConfig

    class _SearchResult(Protocol):
        """What `end_search` reads of a search's result (scale.tune.TuneResult)."""

        @property
        def study_dir(self) -> Path: ...

        @property
        def best(self) -> Mapping[str, Any] | None: ...


PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: its UI nests a run under this parent
ARTIFACTS = ("best.keras", "report.html", "config.yaml", "run.json", "metrics.json", "history.csv", "train.log")
# MLflow retries an unreachable server 7 times with backoff (minutes); once, with a 10 s timeout, is enough here
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def require(cfg: TrainConfig) -> None:
    """A one-line error before anything is written when `track: mlflow` cannot work here."""
    if cfg.track != "mlflow":
        return
    from imgtrain.core.extras import missing

    if missing("mlflow"):
        raise ConfigError(
            "track 'mlflow' needs the [mlflow] extra (mlflow not installed): pip install 'imgtrain[mlflow]'; "
            "track: none turns tracking off"
        )
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        where = Path(urlparse(uri).path or "mlruns").absolute().parent / "mlflow.db"
        raise ConfigError(
            f"tracking_uri {uri!r} is MLflow's file store, which MLflow 3 refuses to open; use a database, "
            f"tracking_uri=sqlite:///{where}, or a tracking server, tracking_uri=http://HOST:PORT"
        )


def file_store(uri: str) -> bool:
    """Whether `uri` names MLflow's classic file store: file://... or a plain path ("./mlruns", "/data/mlruns")."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme == "file" or (bool(uri) and not scheme)


class Tracker:
    """One MLflow run; without a client (`track: none`, a process other than 0, or after the first failed call)
    every method does nothing. `record`: what run.json keeps of it."""

    def __init__(self, uri: str = "", log: logging.Logger | None = None) -> None:
        self.uri, self.log = uri, log
        self.run_id: str | None = None
        self.client: MlflowClient | None = None
        self.record: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """self.client.`method`(*args, **kwargs), or None once tracking has failed (saying so once)."""
        if self.client is None:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of the tracker must leave training alone
            self.fail(what, err)
            return None

    def fail(self, what: str, err: Exception) -> None:
        """Tracking off for the rest of the run, said once on stderr and in train.log, kept in run.json."""
        self.client = None
        message = f"mlflow: cannot {what} at {self.uri} ({_cause(err)}); training goes on without tracking"
        self.record["error"] = message  # in place: run.json holds this dict
        if self.log is not None:
            self.log.warning(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.client is None:  # before building the metrics: without tracking, MLflow is never imported
            return
        self.call(f"log the metrics of epoch {epoch + 1}", "log_batch", self.run_id, metrics=_metrics(logs, epoch))

    def finish(self, run_dir: Path, metrics: dict[str, Any], files: Iterable[str] = ARTIFACTS) -> None:
        """The test metrics and the artifacts (`files` of `run_dir` that exist), then the run's end."""
        if self.client is None:
            return
        if metrics:
            self.call("log the test metrics", "log_batch", self.run_id, metrics=_metrics(metrics, 0))
        for name in files:
            if (run_dir / name).is_file():
                self.call(f"upload {name}", "log_artifact", self.run_id, str(run_dir / name))
        self.end("FINISHED")

    @contextlib.contextmanager
    def ended_by_errors(self, interrupted: Callable[[], bool]) -> Iterator[None]:
        """Ends the MLflow run if the block raises: KILLED where `interrupted()` (the same command resumes the run),
        FAILED otherwise."""
        try:
            yield
        except BaseException:
            self.end("KILLED" if interrupted() else "FAILED")
            raise

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (an interrupted run, which the same command resumes)."""
        self.call("end the run", "set_terminated", self.run_id, status)


def _cause(err: Exception) -> str:
    """The root of an MLflow error in a few words: the socket's "[Errno 111] Connection refused" rather than the
    HTTP library's three nested wrappers around it."""
    text = str(err).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0)
    return text.splitlines()[0][:200] if text else type(err).__name__


def _metrics(values: dict[str, Any], step: int) -> list[Metric]:
    """MLflow Metrics of the numbers in `values` (Keras' logs, metrics.json: strings and nested dicts left out)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)  # MLflow's timestamps are in milliseconds
    out: list[Metric] = []
    for key, value in values.items():
        if isinstance(value, (bool, str, dict, list, tuple)) or value is None:
            continue
        try:
            out.append(Metric(key, float(value), now, step))
        except (TypeError, ValueError):
            continue
    return out


def _client(uri: str | None, log: logging.Logger | None) -> Tracker:
    """(Tracker with an MlflowClient for `uri`, or None where `uri` is None: MLflow's own default)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow.tracking import MlflowClient

    tracker = Tracker(uri or mlflow.get_tracking_uri(), log)
    try:  # a store that cannot open (a bad URI, a database it cannot create) is a server that is down
        tracker.client = MlflowClient(tracking_uri=tracker.uri)
    except Exception as err:  # noqa: BLE001 - as in Tracker.call
        tracker.fail("open the tracking store", err)
    return tracker


def _experiment(tracker: Tracker, name: str) -> str | None:
    found = tracker.call(f"read experiment {name!r}", "get_experiment_by_name", name)
    if found is not None:
        return cast(str, found.experiment_id)
    return cast("str | None", tracker.call(f"create experiment {name!r}", "create_experiment", name))


def start_run(cfg: TrainConfig, run_dir: Path, record: dict[str, Any] | None, log: logging.Logger) -> Tracker:
    """The run's tracker: the MLflow run in `record` (run.json's "mlflow", kept by a resumed run) continued, or a
    new one with the config as params. `record` may name a parent run (a tune trial). The tracker's record is
    what run.json keeps: {"tracking_uri", "experiment_id", "run_id"[, "parent_run_id"][, "error"]}."""
    tags = {"imgtrain_run_dir": str(run_dir.resolve()), "imgtrain_dataset": cfg.dataset, "imgtrain_model": cfg.model}
    return _open(cfg, dict(record or {}), run_dir.name, tags, log)


def start_search(cfg: TrainConfig, study_dir: Path) -> Tracker:
    """The parent run of an `imgtrain tune` search (its trials are child runs), with the search's base config as
    params; study_dir/mlflow.json keeps it, so that the same command resumes the search into the same run. Workers
    of one search (`tune --storage`) share study_dir: the first to get its lock creates the run, the others join it."""
    import fcntl

    from imgtrain.core.saving import atomic_write_json

    if cfg.track != "mlflow":
        return Tracker()
    saved = study_dir / "mlflow.json"
    tags = {
        "imgtrain_study_dir": str(study_dir.resolve()),
        "imgtrain_dataset": cfg.dataset,
        "imgtrain_model": cfg.model,
    }
    with open(study_dir / ".mlflow.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or its process dies)
        earlier = json.loads(saved.read_text()) if saved.is_file() else {}
        tracker = _open(cfg, earlier, study_dir.name, tags, None)
        atomic_write_json(saved, tracker.record)
    return tracker


def end_search(tracker: Tracker, result: _SearchResult) -> None:
    """The best trial's value and settings (as tags: a resumed search may find a better one), the search's pages."""
    if not tracker.active:
        return
    if result.best:
        tags = {f"best.{k}": str(v) for k, v in result.best.get("params", {}).items()}
        for key, value in {"best.trial": str(result.best["number"]), **tags}.items():
            tracker.call("tag the best trial", "set_tag", tracker.run_id, key, value)
        tracker.call("log the best value", "log_metric", tracker.run_id, "best_value", float(result.best["value"]))
    tracker.finish(result.study_dir, {}, files=("tune.html", "best.yaml", "history.png", "importances.png"))


def _open(
    cfg: TrainConfig, earlier: dict[str, Any], name: str, tags: dict[str, str], log: logging.Logger | None
) -> Tracker:
    """A tracker on the MLflow run in `earlier` (a record as start_run describes) continued, or on a new run."""
    tracker = _client(cfg.tracking_uri, log)
    tracker.record = {"tracking_uri": tracker.uri, **{k: earlier[k] for k in ("parent_run_id",) if k in earlier}}
    experiment = _experiment(tracker, cfg.experiment)
    if experiment is None:
        return tracker
    tracker.record["experiment_id"] = experiment
    if earlier.get("run_id") and earlier.get("tracking_uri") == tracker.uri:
        tracker.run_id = tracker.record["run_id"] = earlier["run_id"]
        tracker.call("resume the run", "update_run", tracker.run_id, status="RUNNING")
        return tracker
    if earlier.get("parent_run_id"):
        tags = {**tags, PARENT_TAG: earlier["parent_run_id"]}
    run = tracker.call("create a run", "create_run", experiment, run_name=name, tags=tags)
    if run is not None:
        tracker.run_id = tracker.record["run_id"] = run.info.run_id
        _log_params(tracker, cfg)
    return tracker


def _log_params(tracker: Tracker, cfg: TrainConfig) -> None:
    import yaml
    from mlflow.entities import Param

    from imgtrain.core.config import save_config

    flat = _flatten(yaml.safe_load(save_config(cfg)))
    params = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]  # 6,000 characters: MLflow's limit
    for i in range(0, len(params), 100):  # 100 params a call: MLflow's limit
        tracker.call("log the config", "log_batch", tracker.run_id, params=params[i : i + 100])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def epoch_callback(tracker: Tracker) -> keras.callbacks.Callback:
    """A Keras callback that logs each epoch's metrics to `tracker`."""
    import keras

    class TrackEpochs(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped: Callback is Any
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            tracker.epoch(epoch, logs or {})

    return TrackEpochs()
