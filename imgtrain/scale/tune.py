"""`imgtrain tune CONFIG`: a hyper-parameter search with Optuna over a config. Every trial is a normal run directory;
the study is kept in SQLite beside them, so a killed search resumes where it stopped; bad trials are pruned from
their per-epoch validation metric (Optuna's median rule).

    imgtrain tune CONFIG --trials 20 --timeout 3600
    runs/tune-<CONFIG>/  study.db, trial-000/ ... (run directories), best.yaml, tune.html, history.png,
                         importances.png

Import after choosing the Keras backend (the pruning callback is a Keras callback).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import keras
import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from imgtrain.core.config import TrainConfig, higher_is_better, make_config, save_config
from imgtrain.core.errors import ConfigError, ImgtrainError
from imgtrain.core.saving import atomic_write
from imgtrain.scale.storage import is_shared, one_worker, open_storage
from imgtrain.training.rundir import FINISHED as RUN_FINISHED
from imgtrain.training.tracking import end_search, start_search

if TYPE_CHECKING:
    from optuna.distributions import CategoricalChoiceType

# the search space: parameter -> ("log" | "uniform", (low, high)) or ("choice", values)
SPACE = {
    "learning_rate": ("log", (1e-4, 1e-2)),
    "batch_size": ("choice", (32, 64, 128, 256)),
    "width": ("choice", (64, 128, 256, 512)),  # model_options.width (mlp) or .dense (the CNNs' dense layer)
    "dropout": ("uniform", (0.0, 0.5)),  # model_options.dropout
    "weight_decay": ("log", (1e-5, 1e-2)),  # optimizers adamw and sgd
    "schedule": ("choice", ("constant", "cosine", "onecycle")),
}
STARTUP_TRIALS = 2  # the pruner lets this many trials finish before it compares with their median
WARMUP_EPOCHS = 1  # and prunes no trial in its first epoch
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class PruneTrial(keras.callbacks.Callback):  # type: ignore[misc]  # Keras has no types: Callback is Any
    """Reports `monitor` to the Optuna trial after every epoch; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__()
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


@dataclass
class TuneResult:
    study_dir: Path
    trials: list[dict[str, Any]]  # trial_rows()
    best: dict[str, Any] | None  # the best complete trial's row, None while there is none
    best_config: Path | None
    report: Path


def _model_options(cfg: TrainConfig, model: Any = None) -> set[str]:
    """The options of the model's builder (none for a model from Python, which takes its options where it is built)."""
    from imgtrain.models.source import model_source

    return model_source(cfg, model).options()


def unsearchable(cfg: TrainConfig, model: Any = None) -> dict[str, str]:
    """{parameter: why this config (and `model` from Python, if given) cannot search it}."""
    options = _model_options(cfg, model)
    why = {}
    if not options & {"width", "dense"}:
        why["width"] = f"model {cfg.model!r} has no width or dense option"
    if "dropout" not in options:
        why["dropout"] = f"model {cfg.model!r} has no dropout option"
    if cfg.optimizer not in ("adamw", "sgd"):
        why["weight_decay"] = f"optimizer {cfg.optimizer!r} has no weight decay; use adamw or sgd"
    if cfg.reduce_lr_patience:
        why["schedule"] = "reduce_lr_patience needs schedule 'constant'"
    return why


def search_params(cfg: TrainConfig, names: list[str] | tuple[str, ...] = (), model: Any = None) -> list[str]:
    """The parameters to search: `names`, checked, or every one of SPACE that this config can search."""
    for n in names:
        if n not in SPACE:
            raise ConfigError(f"unknown search parameter {n!r}; known: {', '.join(SPACE)}")
    why = unsearchable(cfg, model)
    for n in names:
        if n in why:
            raise ConfigError(f"cannot search {n}: {why[n]}")
    return list(dict.fromkeys(names)) if names else [n for n in SPACE if n not in why]


def suggest(trial: optuna.Trial, name: str) -> CategoricalChoiceType:
    kind, values = SPACE[name]
    if kind == "choice":
        return trial.suggest_categorical(name, list(values))
    return trial.suggest_float(name, *cast("tuple[float, float]", values), log=kind == "log")


def trial_config(base: TrainConfig, values: dict[str, Any], out: Path) -> TrainConfig:
    """`base` with a trial's parameter values, written to `out` (width and dropout: a registered model's options)."""
    d = base.model_dump()
    options = dict(d["model_options"])
    for k, v in values.items():
        if k == "width":
            options["width" if "width" in _model_options(base) else "dense"] = v
        elif k == "dropout":
            options["dropout"] = v
        else:
            d[k] = v
    return make_config(**{**d, "model_options": options, "out": str(out), "verbose": "quiet"})


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Plain rows of every trial: number, state, value (a pruned trial's last reported one), params, run dir."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": value,
                "params": dict(t.params),
                "run_dir": t.user_attrs.get("run_dir"),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "seconds": seconds,
                "retry_of": t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of")),
            }
        )
    return rows


def open_study(
    cfg: TrainConfig, names: list[str], study_dir: Path, storage: str | optuna.storages.BaseStorage | None = None
) -> optuna.Study:
    """The search's study (in study_dir/study.db unless `storage`, from storage.open_storage), created or loaded;
    a search started with another config or other parameters is refused, as `imgtrain train` refuses to resume a
    run with other settings."""
    shared = storage is not None and not isinstance(storage, str)
    study = optuna.create_study(
        storage=storage or open_storage(study_dir, None, 0),
        study_name=study_dir.name,
        load_if_exists=True,
        direction="maximize" if higher_is_better(cfg.monitor) else "minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_EPOCHS),
    )
    # seeded by (seed, trials so far): reproducible, and a resumed search does not replay the first start's draws;
    # workers sharing a study also differ by process, or two starting together would draw the same trials
    start = np.random.default_rng([cfg.seed, len(study.trials), *([os.getpid()] if shared else [])]).integers(2**31)
    study.sampler = optuna.samplers.TPESampler(seed=int(start))
    base = make_config(**{**cfg.model_dump(), "out": None}).model_dump(mode="json")
    saved = study.user_attrs.get("base_config")
    if saved is None:
        study.set_user_attr("base_config", base)
        study.set_user_attr("params", names)
    elif saved != base or study.user_attrs.get("params") != names:
        keys = sorted(k for k in base if base[k] != saved.get(k)) + (
            ["--param"] if study.user_attrs.get("params") != names else []
        )
        raise ImgtrainError(
            f"{study_dir} holds a search with other settings ({', '.join(keys)}); run it with the "
            "same ones or choose another --name"
        )
    return study


def retry_killed(study: optuna.Study) -> list[int]:
    """Trials left running by a killed search are marked failed and queued again with the same parameters and run
    directory, so the new trial resumes that run from its last completed epoch."""
    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        if "run_dir" in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"run_dir": t.user_attrs["run_dir"], "retry_of": t.number})
            retried.append(t.number)
    return retried


def _earlier_epochs(run_dir: Path, monitor: str) -> list[tuple[int, float]]:
    from imgtrain.analysis.report import read_history

    values = read_history(run_dir / "history.csv").get(monitor, [])
    return [(i, v) for i, v in enumerate(values) if math.isfinite(v)]


def _status(run_dir: Path) -> str | None:
    from imgtrain.analysis.report import read_run

    return read_run(run_dir).info.get("status") if (run_dir / "run.json").is_file() else None


def _mark_pruned(run_dir: Path) -> None:
    """run.json's status "pruned" for a trial the pruner stopped (`runs list` shows it; not "done": not every epoch
    of its config ran)."""
    from imgtrain.core.saving import atomic_write_json

    path = run_dir / "run.json"
    if path.is_file():  # the chief's run directory; written before the trial is recorded as pruned
        atomic_write_json(path, {**json.loads(path.read_text()), "status": "pruned"})


def _run_trial(
    trial: optuna.Trial,
    cfg: TrainConfig,
    prune: PruneTrial,
    study: optuna.Study,
    parent: str | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """The trial's run: trained (or resumed), or read back when it finished before a kill left its trial open.
    `parent`: the search's MLflow run, of which the trial's is a child (track: mlflow); `model`: a builder from
    Python, called anew for each trial."""
    from imgtrain.analysis.report import read_run
    from imgtrain.training.run import train

    run_dir = Path(cast(str, cfg.out))  # trial_config sets it
    if _status(run_dir) in RUN_FINISHED:
        return read_run(run_dir).metrics
    keras.backend.clear_session()  # drop the earlier trials' models from Keras' global state
    try:
        overrides = {"model": model} if model is not None else {}
        return train(cfg, callbacks=[prune], tracking_parent=parent, **overrides).metrics
    except ImgtrainError as err:
        status = _status(run_dir)
        if status == "diverged":  # too high a learning rate, say: a finished trial, not the end of the search
            raise optuna.TrialPruned(f"{cfg.monitor}: the loss diverged") from err
        if status == "interrupted":  # Ctrl-C: queue it again, so that the same command resumes this run
            study.enqueue_trial(trial.params, user_attrs={"run_dir": str(run_dir), "retry_of": trial.number})
            raise ImgtrainError(
                f"search interrupted in trial {trial.number}; run the same command again to resume it"
            ) from err
        raise


def tune(
    cfg: TrainConfig,
    trials: int,
    timeout: float | None = None,
    name: str | None = None,
    folder: str | Path = "runs",
    params: list[str] | tuple[str, ...] = (),
    progress: Callable[[dict[str, Any]], None] | None = None,
    storage: str | None = None,
    heartbeat_s: float = 30.0,
    model: Any = None,
) -> TuneResult:
    """Search until the study holds `trials` finished (complete or pruned) trials, or `timeout` seconds have gone
    (no trial starts after that). `progress(row)` is called after each trial. `storage`: a database URL that
    several workers share (storage.py; each stops when the study holds `trials`, finishing the trial it runs).
    `model`: a function (input_shape, num_classes) -> keras.Model from Python, built anew for each trial."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    if (cfg.num_processes or 1) > 1:
        raise ConfigError(
            f"tune runs its trials in one process (got num_processes {cfg.num_processes}); "
            "distribute 'data-parallel' over this process's devices is fine"
        )
    if model is not None:
        cfg = _python_model(cfg, model)
    names = search_params(cfg, params, model)
    study_dir = Path(folder) / (name or f"tune-{cfg.dataset.split('/')[-1].replace(':', '-')}-{cfg.model}")
    study_dir.mkdir(parents=True, exist_ok=True)
    with one_worker(study_dir, storage):
        study = open_study(cfg, names, study_dir, open_storage(study_dir, storage, heartbeat_s))
        if not is_shared(storage):  # with workers sharing the study, Optuna's heartbeat finds the killed trials
            retry_killed(study)
        tracker = start_search(cfg, study_dir)  # MLflow: the search's run, each trial a child run

        def objective(trial: optuna.Trial) -> float:
            values = {n: suggest(trial, n) for n in names}
            run_dir = Path(trial.user_attrs.get("run_dir") or study_dir / f"trial-{trial.number:03d}")
            trial.set_user_attr("run_dir", str(run_dir))
            for epoch, value in _earlier_epochs(run_dir, cfg.monitor):  # a retried trial's epochs before the kill
                trial.report(value, epoch)
            prune = PruneTrial(trial, cfg.monitor)
            metrics = _run_trial(trial, trial_config(cfg, values, run_dir), prune, study, tracker.run_id, model)
            trial.set_user_attr("epochs_run", metrics.get("epochs_run"))
            if prune.pruned:
                _mark_pruned(run_dir)
                raise optuna.TrialPruned(f"{cfg.monitor} below the median of earlier trials")
            return cast(float, metrics[f"best_{cfg.monitor}"])

        def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            write_outputs(study, cfg, study_dir)
            if progress:
                progress(next(r for r in trial_rows(study) if r["number"] == frozen.number))

        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if done < trials:
            with tracker.ended_by_errors(lambda: True):  # a search stopped part-way resumes with the same command
                study.optimize(
                    objective,
                    timeout=timeout,
                    callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED), after_trial],
                )
        result = write_outputs(study, cfg, study_dir)
        end_search(tracker, result)
        return result


def _python_model(cfg: TrainConfig, model: Any) -> TrainConfig:
    """`cfg` naming a builder from Python (custom:<name>); a model already built is refused: each trial trains a fresh
    model, and one object trained by every trial would carry the last trial's weights into the next."""
    from imgtrain.models.source import PythonModel, model_source

    source = model_source(cfg, model)
    if isinstance(source, PythonModel):
        raise ConfigError(
            "tune trains a fresh model in each trial: pass a function (input_shape, num_classes) -> keras.Model "
            "instead of a built model"
        )
    return make_config(**{**cfg.model_dump(), "model": source.name})


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "needs two complete trials"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except (ValueError, RuntimeError) as err:  # e.g. every trial with the same value of a parameter
        return {}, str(err).splitlines()[0][:120]


def write_outputs(study: optuna.Study, cfg: TrainConfig, study_dir: Path) -> TuneResult:
    """best.yaml (the best complete trial's config, to train with `imgtrain train --config`), the plots and
    tune.html. Rewritten after every trial, so a long search can be followed and a killed one keeps them."""
    from imgtrain.analysis import plots
    from imgtrain.analysis.report import read_run
    from imgtrain.core.figures import png_bytes

    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = None
    best_path = study_dir / "best.yaml"
    if complete:
        b = study.best_trial
        best = next(r for r in rows if r["number"] == b.number)
        trial_cfg = read_run(best["run_dir"]).config
        best_cfg = make_config(**{**trial_cfg, "out": None, "verbose": cfg.verbose})
        head = (
            f"# best of {len(complete)} complete trials of the search in {study_dir}: trial {best['number']}, "
            f"best {cfg.monitor} {best['value']:.4f}, run {best['run_dir']}\n"
            f"# train it: imgtrain train --config {best_path}\n"
        )
        atomic_write(best_path, head + save_config(best_cfg))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    scores, note = _importances(study)
    pngs = {
        "history": png_bytes(plots.search_history(rows, f"best {cfg.monitor}", maximize)),
        "importances": png_bytes(plots.importances(scores, note)),
    }
    for key, data in pngs.items():
        atomic_write(study_dir / f"{key}.png", data)
    report = study_dir / "tune.html"
    atomic_write(
        report,
        render_html(
            study_dir, cfg, rows, best, scores, pngs, study.user_attrs.get("params", []), best_path if best else None
        ),
    )
    return TuneResult(study_dir, rows, best, best_path if best else None, report)


def render_html(
    study_dir: Path,
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    scores: dict[str, float],
    pngs: dict[str, bytes],
    names: list[str],
    best_path: Path | None,
) -> str:
    """tune.html (templates/tune.html.j2): every trial with its parameters and a link to its run, the plots, the
    importances, the search space and the base config."""
    from imgtrain.analysis.pages import render

    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    trials = []
    for r in rows:
        state = r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
        run = Path(r["run_dir"]).name if r["run_dir"] else None
        link = (
            None
            if run is None
            else f"{run}/report.html"
            if (Path(r["run_dir"]) / "report.html").is_file()
            else f"{run}/"
        )
        trials.append(
            {
                "best": bool(best and r["number"] == best["number"]),
                "run": run,
                "link": link,
                "cells": [
                    r["number"],
                    state,
                    r["value"],
                    *[r["params"].get(n) for n in names],
                    r["epochs_run"],
                    round(r["seconds"]) if r["seconds"] else None,
                ],
            }
        )
    best_text = (
        f"trial {best['number']}: best {cfg.monitor} {best['value']:.4f} ({Path(best['run_dir']).name})"
        if best
        else "no complete trial yet"
    )
    return render(
        "tune.html.j2",
        name=study_dir.name,
        model=cfg.model,
        dataset=cfg.dataset,
        counts={**counts, "total": len(rows)},
        best_text=best_text,
        best_path=best_path,
        trials=trials,
        pngs=pngs,
        head=["trial", "state", f"best {cfg.monitor}", *names, "epochs", "seconds", "run"],
        importances=[(k, f"{v:.3f}") for k, v in scores.items()],
        space=[(n, SPACE[n][0], ", ".join(map(str, SPACE[n][1]))) for n in names],
        seed=cfg.seed,
        monitor=cfg.monitor,
        startup_trials=STARTUP_TRIALS,
        warmup_epochs=WARMUP_EPOCHS,
        study=study_dir / "study.db",
        config=[
            (k, yaml.safe_dump(v, default_flow_style=True).strip()) for k, v in cfg.model_dump(mode="json").items()
        ],
    )
