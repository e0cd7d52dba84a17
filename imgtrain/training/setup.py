"""One set-up path for every run: `train()`, `lr_find()`, `imgtrain tune` (through train) and the bench's imgtrain
side all start here, so a new option is wired in one place.

    with setup(config, overrides) as s:   # the config resolved once: backend, model source, precision, job
        run = prepare(s)                  # the run directory, the data, the model, a resume: in this order
        ...                               # fit (training/run.py) or a learning-rate sweep (training/lr_find.py)

`setup` resolves what can be decided before the data are read (the Keras backend, the model's source and the
defaults it implies, a data-parallel job's global batch, the precision) and holds what a run needs while it lasts
(the job's processes, the precision policy, the fused BatchNorm kernel). `prepare` reads the data, picks the batch
size, builds or loads the model and finds the state to resume from. `record` gathers what run.json says of how the
run was set up (each `auto` choice and why, where the model came from).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from imgtrain.core.config import TrainConfig, load_config, make_config
from imgtrain.core.errors import ConfigError, ImgtrainError

if TYPE_CHECKING:  # imported when used: `import imgtrain` imports no Keras, and the models package imports Keras
    import keras

    from imgtrain.data import Dataset
    from imgtrain.models.source import ModelSource
    from imgtrain.training.cluster import Cluster

ConfigLike = TrainConfig | dict[str, Any] | str | Path | None


def as_config(config: ConfigLike, overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict or a YAML/TOML path, with `overrides` winning."""
    if isinstance(config, TrainConfig):
        return make_config(**{**config.model_dump(), **overrides}) if overrides else config
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    return make_config(**{**(config or {}), **overrides})


@dataclass
class Setup:
    """A run's settings, resolved once, and the job it runs in."""

    config: TrainConfig
    source: ModelSource
    cluster: Cluster
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """A run ready to fit: its settings (batch size chosen), data, model, directory and the state to resume from."""

    setup: Setup
    data: Dataset
    model: keras.Model
    run_dir: Path | None  # None: a run that writes no run directory (lr-find)
    resume: dict[str, Any] | None  # last.keras' resume state (epoch, ...) of an unfinished run, else None

    @property
    def config(self) -> TrainConfig:
        return self.setup.config

    @property
    def cluster(self) -> Cluster:
        return self.setup.cluster


def resolve(config: ConfigLike, overrides: dict[str, Any]) -> tuple[TrainConfig, ModelSource]:
    """The config and the model's source; `overrides["model"]` may be a keras.Model or a builder from Python, which
    config.yaml then names custom:<name>. Checks that need no data happen here, before anything is written."""
    from imgtrain.models.source import model_source

    overrides = dict(overrides)
    given = overrides.get("model")
    python = None if given is None or isinstance(given, str) else overrides.pop("model")
    if python is not None:
        overrides["model"] = model_source(make_config(), python).name
    cfg = as_config(config, overrides)
    source = model_source(cfg, python)
    from imgtrain.training.tracking import require

    require(cfg)  # track: mlflow without MLflow installed is one line, before anything is written
    from imgtrain.core.backend import use_backend

    use_backend(cfg.backend)
    return source.resolve(cfg), source  # a pretrained start's defaults, recorded in config.yaml


@contextmanager
def setup(config: ConfigLike, overrides: dict[str, Any], tracking_parent: str | None = None) -> Iterator[Setup]:
    """The run's settings resolved (see the module's doc), and the job, precision and BatchNorm kernel it runs
    with while the block lasts."""
    from imgtrain.core.auto import resolve as resolve_precision
    from imgtrain.core.auto import resolve_batch
    from imgtrain.core.backend import precision
    from imgtrain.training.batchnorm import fused_batchnorm
    from imgtrain.training.cluster import join

    cfg, source = resolve(config, overrides)
    record: dict[str, Any] = {"mlflow": {"parent_run_id": tracking_parent}} if tracking_parent else {}
    if cfg.distribute != "none":  # the global batch is fixed before the data are read
        cfg, record["batch_size"] = resolve_batch(cfg, None)
    with fused_batchnorm(cfg.backend), join(cfg) as cluster:  # one process unless distribute
        # precision auto: this machine's choice, recorded in config.yaml; after joining, because asking JAX for
        # its devices before jax.distributed.initialize makes the join fail
        cfg, record["precision"] = resolve_precision(
            cluster.config, source.precision(cfg), lambda: source.kinds(cluster.config)
        )
        with precision(cfg.precision):
            yield Setup(cfg, source, replace(cluster, config=cfg), record)


def prepare(s: Setup, writes: bool = True, **data_changes: Any) -> Prepared:
    """The run's directory (`writes`: chosen, an unfinished one resumed), its data (`data_changes`: run_dataset's
    overrides, e.g. val_split=0.0), its batch size, its model. Updates `s` with the batch size chosen."""
    import keras

    from imgtrain.core.auto import resolve_batch
    from imgtrain.data import run_dataset
    from imgtrain.training.rundir import choose_run_dir

    run_dir, resume_from = choose_run_dir(s.config) if writes else (None, None)
    keras.utils.set_random_seed(s.config.seed)
    ds = run_dataset(s.config, **data_changes)
    if "batch_size" not in s.record:  # auto: by the size of the training set, recorded in config.yaml
        s.config, s.record["batch_size"] = resolve_batch(s.config, len(ds.train))
        s.cluster = replace(s.cluster, config=s.config)
    if cast(int, s.config.batch_size) > len(ds.train):  # resolved just above: no `auto`
        raise ConfigError(
            f"batch_size {s.config.batch_size} is larger than the {len(ds.train)} training images; "
            f"use at most {len(ds.train)}"
        )
    model, origin = s.source.build(s.config, ds)
    if origin:
        s.record["init_from"] = origin
    resume = None
    if resume_from is not None:
        resume = _resume_state(resume_from)
        model = s.source.resume(resume_from, model)  # weights and optimizer state
    # every process must resume from the same epoch; the check also keeps process 0 from writing before all have read
    s.cluster.agree("the epoch to resume from", resume["epoch"] if resume else 0)
    return Prepared(s, ds, model, run_dir, resume)


def _resume_state(last: Path) -> dict[str, Any]:
    from imgtrain.core.saving import read_meta
    from imgtrain.training.callbacks import STATE_FORMAT

    resume = read_meta(last).get("resume")
    if not resume or resume.get("format") != STATE_FORMAT:
        raise ImgtrainError(f"{last} has no resume state this version can read; remove it to start over")
    return dict(resume)
