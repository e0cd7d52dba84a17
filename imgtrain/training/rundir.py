"""A run's directory: where it goes, whether an earlier run there is resumed or refused, its train.log, and
run.json's first and unfinished states. train.py decides what happens in a run; this module where it is kept."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgtrain.core.backend import versions
from imgtrain.core.config import TrainConfig, load_config, save_config
from imgtrain.core.errors import ImgtrainError
from imgtrain.core.saving import atomic_write, atomic_write_json, remove_stale_temps

if TYPE_CHECKING:
    import keras

    from imgtrain.data.dataset import Dataset
    from imgtrain.training.cluster import Cluster

RUNS_DIR = "runs"


FINISHED = ("done", "pruned")  # run.json statuses of a run that is over (pruned: stopped by `imgtrain tune`)


def default_run_dir(cfg: TrainConfig) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in cfg.dataset.split("/")[-1] or cfg.dataset)
    return Path(RUNS_DIR) / f"{slug}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"


# config keys that may differ between a run and its resumption (a process's id and the coordinator's address
# may change when a distributed job is started again)
IGNORED_ON_RESUME = {"out", "verbose", "process_id", "coordinator"}
AUTO_KEYS = {"precision", "batch_size"}  # settings whose `auto` a run resolves and records


def choose_run_dir(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """(run directory, last.keras to resume from or None). A finished run is never replaced; an unfinished one
    with the same config is resumed; an unfinished one with another config is refused."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if not (run_dir / "run.json").exists():
        return run_dir, None
    status = json.loads((run_dir / "run.json").read_text()).get("status")
    if status in FINISHED:
        raise ImgtrainError(f"{run_dir} already holds a finished run; choose another --out or remove that directory")
    saved = load_config(run_dir / "config.yaml").model_dump(exclude=IGNORED_ON_RESUME)
    # an `auto` setting resumes with what the run chose (auto.resolve_batch reads it from config.yaml)
    now = {
        k: saved.get(k) if v == "auto" and k in AUTO_KEYS else v
        for k, v in cfg.model_dump(exclude=IGNORED_ON_RESUME).items()
    }
    if saved != now:
        keys = sorted(k for k in now if now[k] != saved.get(k))
        raise ImgtrainError(
            f"{run_dir} holds an unfinished run with other settings ({', '.join(keys)}); "
            "resume it with the same ones or choose another --out"
        )
    last = run_dir / "last.keras"
    return run_dir, (last if last.exists() else None)


def make_run_dir(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        remove_stale_temps(run_dir)  # a killed run's half-written files: the resumed run does not keep them
    except OSError as err:
        raise ImgtrainError(f"cannot write run directory {run_dir}: {err.strerror}") from err
    return run_dir


RUN_LOG = "imgtrain.run"  # the logger of every run's messages, in the package's one logger hierarchy


def run_logger(run_dir: Path | None) -> logging.Logger:
    """The run's logger: `imgtrain.run`, with train.log in `run_dir` added as a handler for this run (end_run_logger
    removes it); None (a process other than 0 of a distributed run): no file, the messages go only where the
    application sends imgtrain's log."""
    log = logging.getLogger(RUN_LOG)
    log.setLevel(logging.INFO)
    if run_dir is not None:
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", errors="backslashreplace")  # odd names
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.set_name(f"train.log of {run_dir}")
        log.addHandler(handler)
    return log


def end_run_logger(log: logging.Logger) -> None:
    """Close and remove the train.log handlers that run_logger added (a run inside another's, e.g. a tune trial,
    removes only its own: the most recent)."""
    for handler in reversed(log.handlers):
        if (handler.get_name() or "").startswith("train.log of "):
            log.removeHandler(handler)
            handler.close()
            return


def start_record(
    cluster: Cluster,
    ds: Dataset,
    model: keras.Model,
    run_dir: Path,
    resume: dict[str, Any] | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """run.json's first state (kept from the earlier start of a resumed run); process 0 writes it and config.yaml."""
    previous = json.loads((run_dir / "run.json").read_text()) if resume and (run_dir / "run.json").exists() else {}
    run_info: dict[str, Any] = {
        "status": "running",
        "started": previous.get("started", datetime.now().isoformat(timespec="seconds")),
        "versions": versions(),
        "data": ds.summary(),
        "params": int(model.count_params()),
        "run_dir": str(run_dir),
        "resumed": previous.get("resumed", []) + ([resume["epoch"]] if resume else []),
        **record,
    }
    if "mlflow" in previous:  # a resumed run goes on logging into the MLflow run it started
        run_info["mlflow"] = {**previous["mlflow"], **record.get("mlflow", {})}
    if cluster.sharding:
        run_info["distribution"] = cluster.summary()
    if cluster.chief:
        atomic_write(run_dir / "config.yaml", save_config(cluster.config))
        atomic_write_json(run_dir / "run.json", run_info)
    return run_info


def refuse_unfinished(
    cluster: Cluster,
    run_dir: Path,
    run_info: dict[str, Any],
    interrupted: bool,
    rows: list[dict[str, float]],
    losses: list[float],
) -> None:
    """An interrupted or diverged fit ends the run here: run.json says so, and the user gets one line."""
    cfg = cluster.config
    if interrupted:
        run_info.update(status="interrupted")
        message = (
            f"interrupted after {rows[-1]['epoch'] + 1 if rows else 0} of {cfg.epochs} epochs; run the same "
            f"command again (with --out {run_dir}) to resume"
        )
    elif losses and not math.isfinite(losses[-1]):
        last = run_dir / "last.keras"
        kept = (
            f"the last good model is {last} (epoch {len(losses) - 1})"
            if last.exists()
            else "it diverged in the first epoch, so no model was kept"
        )
        run_info.update(status="diverged", finished=datetime.now().isoformat(timespec="seconds"))
        message = (
            f"loss became {losses[-1]} in epoch {len(losses)} and training stopped; {kept}; "
            f"try a lower learning_rate (was {cfg.learning_rate:g})"
        )
    else:
        return
    if cluster.chief:
        atomic_write_json(run_dir / "run.json", run_info)
    raise ImgtrainError(message)
